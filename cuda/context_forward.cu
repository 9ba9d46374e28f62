// CudaContext: the building blocks (projections, MLP, Q/K/V, output head) and the forward pass of
// a chunk of tokens over the arena (full-cache prefill chunks, multi-token evals, the decode step).
#include <algorithm>

#include "context_impl.cuh"
#include "quant.cuh"

namespace headkv {

// out (ldo) (=, +=) W · in for T rows of `in` (contiguous rows of W.cols floats).
void CudaContext::Impl::linear(const DW& w, const float* in, int64_t T, float* out, int64_t ldo, bool add) {
  if (T <= kMatvecMaxT) {
    matvec(w, nullptr, in, w.cols, out, ldo, (int)T, add ? MV_ADD : MV_STORE, mv_q8x, st);
    return;
  }
  gemm_weights(w, in, T, out, ldo, add, half_gemm, xh.get(), wscratch.get(), wscratch_elems, st);
}

// out[t] = the embedding rows of ids (times the architecture's embedding scale).
void CudaContext::Impl::embed(const int32_t* ids, int64_t T, float* out) {
  embed_rows(dm->tok_embd, ids, T, out, st);
  if (hp.embd_scale != 1.0f) scale(out, hp.embd_scale, T * hp.n_embd, st);
}

// x[T][d] += Wo · att (-> post-attention RMSNorm; its input goes through xn, free after Q/K/V).
void CudaContext::Impl::attn_out(const DevLayer& L, int64_t T, float* xc) {
  if (!L.post_attn_norm) return linear(L.wo, att.get(), T, xc, hp.n_embd, true);
  linear(L.wo, att.get(), T, xn.get(), hp.n_embd, false);
  rms_norm_add(xn.get(), L.post_attn_norm, xc, T, hp.n_embd, hp.rms_eps, st);
}

// x[T][d] += MLP(RMSNorm(x)) (-> post-FFN RMSNorm). GeGLU takes the unfused path: the fused
// matvecs apply SiLU.
void CudaContext::Impl::mlp(const DevLayer& L, float* xc, int64_t T) {
  const int64_t d = hp.n_embd, ff = hp.n_ff;
  if (hp.arch->gelu || L.post_ffn_norm) {
    rms_norm(xc, L.ffn_norm, xn.get(), T, d, hp.rms_eps, st);
    linear(L.gate, xn.get(), T, gate.get(), ff, false);
    linear(L.up, xn.get(), T, up.get(), ff, false);
    hp.arch->gelu ? gelu_mul(gate.get(), up.get(), T * ff, st) : silu_mul(gate.get(), up.get(), T * ff, st);
    mark(5);
    if (!L.post_ffn_norm) return linear(L.down, gate.get(), T, xc, d, true);
    linear(L.down, gate.get(), T, xn.get(), d, false);  // (xn is free once gate/up are computed)
    rms_norm_add(xn.get(), L.post_ffn_norm, xc, T, d, hp.rms_eps, st);
    mark(6);
    return;
  }
  if (T == 1 && L.gate.type == L.up.type && d % 4 == 0) {
    matvec_norm_swiglu(L.gate, L.up, xc, L.ffn_norm, hp.rms_eps, gate.get(), mv_q8x, st);
    mark(5);
    linear(L.down, gate.get(), T, xc, d, true);
    mark(6);
    return;
  }
  rms_norm(xc, L.ffn_norm, xn.get(), T, d, hp.rms_eps, st);
  if (T <= kMatvecMaxT && L.gate.type == L.up.type) {
    matvec(L.gate, &L.up, xn.get(), d, gate.get(), ff, (int)T, MV_SWIGLU, mv_q8x, st);
  } else {
    linear(L.gate, xn.get(), T, gate.get(), ff, false);
    linear(L.up, xn.get(), T, up.get(), ff, false);
    silu_mul(gate.get(), up.get(), T * ff, st);
  }
  linear(L.down, gate.get(), T, xc, d, true);
}

// RMSNorm -> Q, K, V for T rows of xc into q / k / v.
void CudaContext::Impl::qkv(const DevLayer& L, const float* xc, int64_t T) {
  rms_norm(xc, L.attn_norm, xn.get(), T, hp.n_embd, hp.rms_eps, st);
  linear(L.wq, xn.get(), T, q.get(), qdim(), false);
  linear(L.wk, xn.get(), T, k.get(), kvdim(), false);
  linear(L.wv, xn.get(), T, v.get(), kvdim(), false);
}

// What the architecture adds between the projections and RoPE (model/arch.h): Q/K/V biases,
// per-head q/k RMSNorm (in place: each thread reads its element before writing it).
void CudaContext::Impl::qkv_post(const DevLayer& L, int64_t T) {
  if (L.bq) {
    add_bias(q.get(), L.bq, T, qdim(), st);
    add_bias(k.get(), L.bk, T, kvdim(), st);
    add_bias(v.get(), L.bv, T, kvdim(), st);
  }
  if (L.q_norm) {
    rms_norm(q.get(), L.q_norm, q.get(), T * hp.n_head, hp.head_dim, hp.rms_eps, st);
    rms_norm(k.get(), L.k_norm, k.get(), T * hp.n_head_kv, hp.head_dim, hp.rms_eps, st);
  }
}

// Layer il's RoPE as model/forward.cpp: a sliding-window layer's own base where the architecture has
// one (and no linear position scaling: Gemma 3 scales the global layers only), else LongRoPE's long
// or short factors by n_ctx; LongRoPE's attention factor on every layer.
RopeStore CudaContext::Impl::rope_args(int il, int64_t T) const {
  RopeStore r;
  r.q = q.get();
  r.k = k.get();
  r.v = v.get();
  r.T = (int)T;
  r.nh = hp.n_head;
  r.nkv = hp.n_head_kv;
  r.hd = hp.head_dim;
  r.rope_dim = hp.rope_dim;
  r.neox = hp.arch->rope_neox;
  const bool local = hp.is_swa(il);
  if (local && dm->rope_inv_freq_swa) r.inv_freq = dm->rope_inv_freq_swa;
  // LongRoPE: the long factors for contexts beyond the original training length (Model::rope_inv_freq)
  else r.inv_freq = dm->rope_inv_freq_long && n_ctx > hp.n_ctx_orig ? dm->rope_inv_freq_long : dm->rope_inv_freq;
  r.rope_scale = local ? 1.0f : hp.rope_scale;
  r.mscale = hp.rope_mscale;  // (every layer, as the CPU's rope_tables)
  return r;
}

RopeStore CudaContext::Impl::arena_store_args(int il, int64_t T) {
  const int H = hp.n_head_kv;
  RopeStore r = rope_args(il, T);
  r.ring = ring_of(il);
  r.kh = ak.get();
  r.vh = av.get();
  r.tk = tk;
  r.tv = tv;
  r.kstage = k.get();  // (the fused path leaves the K/V scratch to the quantized store's stage)
  r.vstage = v.get();
  r.qcount = qcount.get();
  r.pos = apos.get();
  r.seg_off = seg_off.get() + il * H;
  r.used = used.get() + il * H;
  return r;
}

DecodeArgs CudaContext::Impl::decode_args(int il) {
  const int H = hp.n_head_kv;
  DecodeArgs a;
  a.q = q.get();
  a.out = att.get();
  a.k = ak.get();
  a.v = av.get();
  a.tk = tk;
  a.tv = tv;
  a.seg_off = seg_off.get() + il * H;
  a.used = used.get() + il * H;
  a.item_head = item_head.get() + layer_item0[il];
  a.item_split = item_split.get() + layer_item0[il];
  a.head_splits = head_splits.get() + il * H;
  a.head_first = head_first.get() + il * H;
  a.n_items = layer_items[il];
  a.nh = hp.n_head;
  a.nkv = H;
  a.hd = hp.head_dim;
  a.part = part.get();
  a.warps = attn_warps;
  a.window = window(il);
  a.ring = ring_of(il);
  a.softcap = hp.attn_softcap;
  return a;
}

// One chunk of T tokens through every layer, K/V appended to the arena at each segment's end.
// The chunk's first position is pos0, or read from device memory at pos0_dev (graph capture).
void CudaContext::Impl::forward_arena(int64_t T, int32_t pos0, const int32_t* pos0_dev) {
  const int H = hp.n_head_kv;
  mark(0);
  embed(pos0_dev ? step_in.get() : tok.get(), T, x.get());
  for (int il = 0; il < hp.n_layer; ++il) {
    const DevLayer& L = dm->layers[il];
    mark(0);
    RopeStore r = arena_store_args(il, T);
    r.pos0 = pos0;
    r.pos0_dev = pos0_dev;
    const DW wqkv[3] = {L.wq, L.wk, L.wv};
    const bool one = T == 1 && matvec_norm_fusable(wqkv, 3);
    if (one && fuse_rope && qkv_fusable() && matvec_qkv_rope(wqkv, x.get(), L.attn_norm, hp.rms_eps, r, mv_q8x, st)) {
      mark(1);  // RoPE and the K/V store ran in the projection's epilogue
    } else {
      float* ys[3] = {q.get(), k.get(), v.get()};
      if (one) {
        matvec_norm(wqkv, 3, ys, x.get(), L.attn_norm, hp.rms_eps, mv_q8x, st);
      } else if (T == 1 && matvec_norm_fusable(wqkv, 1)) {
        // Q, K, V of different types (Q4_K_M's Q6_K attn_v layers): one RMSNorm-fused matvec per
        // run of one type, instead of a separate (single-block) RMSNorm and three matvecs
        for (int i = 0, n; i < 3; i += n) {
          for (n = 1; i + n < 3 && matvec_norm_fusable(wqkv + i, n + 1);) ++n;
          matvec_norm(wqkv + i, n, ys + i, x.get(), L.attn_norm, hp.rms_eps, mv_q8x, st);
        }
      } else {
        qkv(L, x.get(), T);
      }
      qkv_post(L, T);
      mark(1);
      rope_store(r, st);
    }
    mark(2);
    if (T == 1) {
      decode_attention(decode_args(il), st);
    } else {
      FlashArgs f;
      f.q = q.get();
      f.out = att.get();
      f.k = ak.get();
      f.v = av.get();
      f.half_kv = true;
      f.tk = tk;
      f.tv = tv;
      f.T = (int)T;
      f.nh = hp.n_head;
      f.nkv = H;
      f.hd = hp.head_dim;
      f.seg_off = seg_off.get() + il * H;
      f.seg_len = used.get() + il * H;
      f.window = window(il);
      f.ring = ring_of(il);
      f.softcap = hp.attn_softcap;
      half_gemm ? flash_attention_tc(f, st) : flash_attention(f, st);
    }
    mark(3);
    attn_out(L, T, x.get());
    mark(4);
    mlp(L, x.get(), T);
  }
  add_used(used.get(), hp.n_layer * H, (int)T, st);
}

// Final norm + output head for `rows` rows of xf into logits_d (row-major [rows][vocab]).
void CudaContext::Impl::head(const float* xf, int64_t rows) {
  if (rows == 1 && hp.n_embd % 4 == 0) {
    float* y = logits_d.get();
    matvec_norm(&dm->output, 1, &y, xf, dm->output_norm, hp.rms_eps, mv_q8x, st);
    if (hp.final_softcap > 0) softcap(y, hp.final_softcap, hp.n_vocab, st);
    return;
  }
  rms_norm(xf, dm->output_norm, xn.get(), rows, hp.n_embd, hp.rms_eps, st);
  const float* before = logits_d.get();
  logits_d.reserve((size_t)rows * hp.n_vocab, "logits");
  // The decode graph writes the logits buffer it was captured with: a larger buffer (logits of
  // several rows) invalidates it. (Never during capture: a single row always fits.)
  if (logits_d.get() != before) drop_graph();
  linear(dm->output, xn.get(), rows, logits_d.get(), hp.n_vocab, false);
  if (hp.final_softcap > 0) softcap(logits_d.get(), hp.final_softcap, rows * hp.n_vocab, st);
}

void CudaContext::Impl::fetch_logits(int64_t rows, float* dst) {
  check(cudaMemcpyAsync(dst, logits_d.get(), rows * hp.n_vocab * sizeof(float), cudaMemcpyDeviceToHost, st), "logits");
}

}  // namespace headkv
