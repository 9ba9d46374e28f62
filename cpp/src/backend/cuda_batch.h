// Batched decode step of the CUDA backend: one token appended to each of several CudaContexts over
// one Model (each with its own KV: full cache or per-head arena, and its own position). The linear
// layers (Q/K/V, output, gate/up, down, output head) run once for all rows: in the fast precision on
// Q4_0 / Q4_1 / Q8_0 weights from 9 rows on int8 tensor cores (HEADKV_BATCH_MMQ=0: off), else the
// matvec kernels reading each weight once per 8 rows, or from kGemmRows rows on, dequantized weights
// through cuBLAS (HEADKV_BATCH_GEMM=1: from 9 rows, =0: never); RoPE with the K/V store and the decode
// attention run against each sequence's arena, one launch per layer for all sequences (HEADKV_BATCH_ATTN=0:
// one per sequence). The batch owns one activation scratch, sized for the
// largest batch it has run (at most kMaxRows rows; larger batches run in slices of kMaxRows), and
// its own stream. A step is captured as a CUDA graph, one per row count, and replayed while the set
// of sequences of that count stays the same (rows are ordered by context, so the order they are
// named in does not matter); another set of as many sequences updates that graph in place where
// CUDA allows it, else it is instantiated again (HEADKV_BATCH_GRAPH=0: plain launches).
//
// Numerics: every row takes the activations of its precision's single-token step (fp32 in cuda-fp32
// and with HEADKV_MATVEC=fp32; in the fast precision each row quantized to int8 blocks, as a lone step
// does, also on the tensor cores; cuBLAS rows: fp16), with the RMSNorm as a separate kernel; a row's
// logits do not depend on the other rows' values, but the row count picks the path (dp4a rows up to 8,
// tensor cores from 9), and two paths can round a value on an int8 boundary apart.
// Plain C++ header: the implementation is cuda/context_batch.cu (HEADKV_WITH_CUDA builds only).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/cuda_context.h"

namespace headkv {

class CudaBatch {
 public:
  static constexpr int kMaxRows = 64;
  static constexpr int kGemmRows = 32;
  // Sequences of `precision` (every sequence of a step has it: InvalidArgument otherwise).
  // Unsupported: no usable device, or an architecture the batched step does not run (post-norms,
  // GeGLU, embedding scale, soft-capping, sliding-window layers).
  CudaBatch(const Model& model, CudaPrecision precision);
  ~CudaBatch();
  CudaBatch(const CudaBatch&) = delete;
  CudaBatch& operator=(const CudaBatch&) = delete;

  // Appends tokens[i] to seqs[i]. Every sequence is checked first (null, repeated, another model,
  // a compressing context before its prompt, a token outside the vocabulary, a full cache or
  // arena: InvalidArgument / ContextFull naming ids[i] when given, else its index); on such an
  // error no sequence changes. Afterwards seqs[i]->logits() is its new token's logits. A step of one
  // sequence is that sequence's own decode step (bit for bit its lone eval).
  void step(const std::vector<CudaContext*>& seqs, const int32_t* tokens, const int64_t* ids = nullptr);

  // Allocates the scratch for steps of up to `rows` rows now (OutOfMemory naming the bytes when
  // the device lacks them; the scratch held before stays). Steps grow it as they need.
  void reserve(int rows);
  // Device bytes of the scratch for `rows` rows (its bucket: 8, 16, 32 or 64; 0 for none).
  uint64_t scratch_bytes(int rows) const;
  int rows_allocated() const;
  int64_t graph_captures() const;  // graphs instantiated so far
  int64_t graph_updates() const;   // captured steps applied to the instantiated graph in place

  struct Impl;

 private:
  std::unique_ptr<Impl> p_;
};

}  // namespace headkv
