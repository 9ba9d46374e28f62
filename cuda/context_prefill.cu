// CudaContext: the compressed prefill. Layer by layer over the whole prompt in chunks of `ub` tokens:
// the layer's K/V sit in one buffer, the chunk's queries attend to it (flash attention), then
// selection runs on the GPU (window scores, top-k or streaming flags) and gathers the kept entries
// into the arena.
#include <algorithm>
#include <string>
#include <vector>

#include "context_impl.cuh"
#include "select/spans.h"

namespace headkv {

void CudaContext::Impl::select_layer(int il, int64_t N, int64_t n_prompt, const void* LK, void* LV,
                                     const float* qwin, float* raw, float* pooled, float* rowstat, const uint8_t* runs,
                                     uint8_t* flags, int32_t* list, int32_t* count, const FitBuffers* fit) {
  const int H = hp.n_head_kv, hd = hp.head_dim;
  const int a = plan->window;
  const int64_t P = n_prompt - a;
  const int n_win = N > n_prompt ? (int)(N - n_prompt) : a;  // the probe's tokens, or the prompt's last α
  std::vector<int64_t> caps(H);
  for (int g = 0; g < H; ++g) caps[g] = plan->at(il, g);
  const bool local = hp.is_swa(il);
  if (P > 0) check(cudaMemsetAsync(flags, plan->compressed || local ? 0 : 1, (size_t)H * P, st), "flags");
  if (local && P > 0) {  // a sliding-window layer keeps the prefix's last cap positions
    const std::vector<int64_t> none(H, 0);
    streaming_flags(flags, P, H, none.data(), caps.data(), nullptr, st);
  } else if (plan->compressed && P > 0) {
    if (method == BudgetMethod::Streaming) {
      std::vector<int64_t> sink(H);
      for (int g = 0; g < H; ++g) sink[g] = std::min<int64_t>(kv.sink, caps[g]);
      streaming_flags(flags, P, H, sink.data(), caps.data(), nullptr, st);
    } else {
      window_scores(qwin, LK, half_gemm, N, n_win, P, hp.n_head, H, hd, kv.kernel, kv.max_pool, selection_reach(kv), runs,
                    kv.probe_echo, raw, pooled, rowstat, st);
      if (keep_scores) {
        sel_scores.resize(hp.n_layer);
        sel_scores[il].resize((size_t)H * P);
        check(cudaMemcpyAsync(sel_scores[il].data(), pooled, (size_t)H * P * sizeof(float), cudaMemcpyDeviceToHost, st),
              "scores");
        check(cudaStreamSynchronize(st), "scores");
      }
      if (layer_pooled()) {
        std::vector<int64_t> fl(H);
        int64_t total = 0, floors = 0;
        for (int g = 0; g < H; ++g) {
          fl[g] = std::min<int64_t>(P, (int64_t)(kv.adakv_floor * caps[g]));
          total += caps[g];
          floors += fl[g];
        }
        topk_flags(pooled, P, H, fl.data(), nullptr, flags, nullptr, st);
        const int64_t extra = std::min<int64_t>(total - floors, (int64_t)H * P - floors);
        topk_flags(pooled, (int64_t)H * P, 1, &extra, flags, flags, nullptr, st);
      } else {
        topk_flags(pooled, P, H, caps.data(), nullptr, flags, nullptr, st);
      }
    }
  }
  compact_flags(flags, P, n_prompt, N, H, list, count, st);
  if (fit && !local) {
    const ValueFit f{qwin, fit->owin, a, hp.n_head, H, hd, hp.attn_scale, hp.attn_softcap, kv.value_fit};
    fit_values(f, LK, LV, half_gemm, N, P, list, count, fit->A, fit->lda, fit->W, st);
  }
  int64_t max_count = N;
  if (layer_pooled() && plan->compressed && !local) {
    layer_offsets(seg_off.get() + il * H, count, H, kv.max_new_tokens, st);
  } else {
    max_count = 0;
    for (int g = 0; g < H; ++g) max_count = std::max<int64_t>(max_count, caps[g] + a);
  }
  // (the arena's K/V types: q8_0 / q4_0 rows are quantized from the layer's K/V as they are gathered)
  gather_to_arena(list, count, N, H, hd, LK, LV, half_gemm, seg_off.get() + il * H, ak.get(), av.get(), tk, tv,
                  apos.get(), used.get() + il * H, max_count, st);
}

void CudaContext::Impl::prefill_compressed(const int32_t* prompt, int64_t n_prompt, bool all_logits) {
  const int H = hp.n_head_kv, hd = hp.head_dim, nh = hp.n_head;
  const int64_t d = hp.n_embd;
  sel_scores.clear();
  plan = plan_compressed_layers(budget_params(kv, method), scores ? &*scores : nullptr, hp, n_prompt);
  plan->layer_pooled = layer_pooled();
  std::vector<int64_t> cap(plan->cap.size());
  for (size_t i = 0; i < cap.size(); ++i) cap[i] = (int64_t)plan->cap[i] + plan->window + kv.max_new_tokens;
  const bool scored = plan->compressed && method != BudgetMethod::Streaming;
  const std::vector<int32_t> rows_tok = prefill_rows(kv, prompt, n_prompt, scored);
  const int32_t* tokens = rows_tok.data();
  const int64_t N = (int64_t)rows_tok.size();
  const int a = plan->window;
  const int64_t P = n_prompt - a;
  const int n_win = N > n_prompt ? (int)(N - n_prompt) : a;
  std::vector<uint8_t> runs_h;
  if (scored && kv.span > 1) {
    if (tok_edges.empty()) tok_edges = token_edges(model.tokenizer());
    runs_h = run_continues(tok_edges, prompt, P, kv.span);
  }
  // Value fitting (select/value_fit.h): its scratch rows are as long as the most entries a head of
  // any layer can keep.
  const bool fit = fits_values(kv, *plan, method, N, n_prompt);
  const int64_t fit_m = (int64_t)a * (nh / H);
  int64_t fit_lda = 0;
  if (fit)
    for (int il = 0; il < hp.n_layer; ++il) {
      int64_t most = 0, total = 0;
      for (int g = 0; g < H; ++g) {
        most = std::max<int64_t>(most, plan->at(il, g));
        total += plan->at(il, g);
      }
      fit_lda = std::max<int64_t>(fit_lda, std::min<int64_t>(P, layer_pooled() ? total : most) + a);
    }
  const uint64_t fit_b = fit ? (uint64_t)H * fit_m * fit_lda * 4 + (uint64_t)H * (fit_m * fit_m + fit_m * hd) * 8 +
                                   (uint64_t)a * nh * hd * 4 : 0;
  // Everything the prompt needs, checked before allocating any of it.
  uint64_t arena_b = 0;
  for (int64_t c : cap) arena_b += (uint64_t)c * entry_bytes();
  if (kv_limit && arena_b > kv_limit)  // admission (sequence groups)
    fail(ErrorKind::OutOfMemory, "the compressed KV of this prompt needs " + std::to_string(arena_b) + " bytes, " +
                                     std::to_string(kv_limit) + " are left under the KV limit");
  // The layer's K/V: fp16 in the fast precision, fp32 in cuda-fp32 (the arena's types are stored
  // when they are gathered).
  const uint64_t layer_kv = 2ull * H * N * hd * (half_gemm ? 2 : 4);
  // The prompt's residual stream (every token's activations between layers) is the largest buffer
  // after the layer's K/V: fp16 in the fast precision too (each chunk runs its layer in fp32 scratch).
  const uint64_t need = arena_b + layer_kv + (uint64_t)N * d * (half_gemm ? 2 : 4) + (uint64_t)n_win * nh * hd * 4 +
                        2ull * H * P * 4 + (uint64_t)H * P + (uint64_t)P + (uint64_t)H * N * 4 + (uint64_t)nh * n_win * 8 +
                        fit_b + 1024;
  require_device_bytes(need, "a compressed prompt of " + std::to_string(N) + " tokens (arena " + std::to_string(arena_b) +
                                 " bytes, one layer's K/V " + std::to_string(layer_kv) + " bytes)");
  DBuf<float> X, LK, LV, qwin, raw, pooled, rowstat, owin, fitA;
  DBuf<double> fitW;
  DBuf<__half> Xh, LKh, LVh;
  DBuf<uint8_t> flags, runs;
  DBuf<int32_t> list, count;
  make_arena(cap);
  if (!runs_h.empty()) {
    runs.alloc(runs_h.size(), "token runs");
    check(cudaMemcpyAsync(runs.get(), runs_h.data(), runs_h.size(), cudaMemcpyHostToDevice, st), "token runs");
  }
  if (half_gemm) {
    Xh.alloc(N * d, "prompt activations (fp16)");
    LKh.alloc((size_t)H * N * hd, "layer keys");
    LVh.alloc((size_t)H * N * hd, "layer values");
  } else {
    X.alloc(N * d, "prompt activations");
    LK.alloc((size_t)H * N * hd, "layer keys");
    LV.alloc((size_t)H * N * hd, "layer values");
  }
  const void* lk = half_gemm ? (const void*)LKh.get() : (const void*)LK.get();
  void* lv = half_gemm ? (void*)LVh.get() : (void*)LV.get();
  qwin.alloc((size_t)std::max(n_win, 1) * nh * hd, "window queries");
  raw.alloc((size_t)H * std::max<int64_t>(P, 1), "window scores");
  pooled.alloc((size_t)H * std::max<int64_t>(P, 1), "pooled scores");
  rowstat.alloc((size_t)nh * std::max(n_win, 1) * 2, "softmax statistics");
  flags.alloc((size_t)H * std::max<int64_t>(P, 1), "selection flags");
  list.alloc((size_t)H * N, "kept lists");
  FitBuffers fb{};
  if (fit) {
    owin.alloc((size_t)a * nh * hd, "window outputs");
    fitA.alloc((size_t)H * fit_m * fit_lda, "value fitting");
    fitW.alloc((size_t)H * (fit_m * fit_m + fit_m * hd), "value fitting");
    fb = FitBuffers{owin.get(), fitA.get(), fit_lda, fitW.get()};
  }
  count.alloc(H, "kept counts");
  prefill_peak = layer_kv + arena_bytes();

  for (int64_t c0 = 0; c0 < N; c0 += ub) {
    const int64_t T = std::min<int64_t>(ub, N - c0);
    check(cudaMemcpyAsync(tok.get(), tokens + c0, T * sizeof(int32_t), cudaMemcpyHostToDevice, st), "tokens");
    if (half_gemm) {
      embed(tok.get(), T, x.get());
      f32_to_f16(x.get(), Xh.get() + c0 * d, T * d, st);
    } else {
      embed(tok.get(), T, X.get() + c0 * d);
    }
    check(cudaStreamSynchronize(st), "tokens");  // the host token buffer is reused
  }
  for (int il = 0; il < hp.n_layer; ++il) {
    const DevLayer& L = dm->layers[il];
    for (int64_t c0 = 0; c0 < N; c0 += ub) {
      const int64_t T = std::min<int64_t>(ub, N - c0);
      float* xc = half_gemm ? x.get() : X.get() + c0 * d;
      if (half_gemm) f16_to_f32(Xh.get() + c0 * d, xc, T * d, st);
      qkv(L, xc, T);
      qkv_post(L, T);
      RopeStore r = rope_args(il, T);
      r.pos0 = (int32_t)c0;
      r.kf = LK.get();  // null in the fast precision
      r.vf = LV.get();
      r.kfh = LKh.get();
      r.vfh = LVh.get();
      r.ld_head = N;
      r.row0 = c0;
      rope_store(r, st);
      FlashArgs f;
      f.q = q.get();
      f.out = att.get();
      f.k = lk;
      f.v = lv;
      f.half_kv = half_gemm;
      f.T = (int)T;
      f.nh = nh;
      f.nkv = H;
      f.hd = hd;
      f.ld_head = N;
      f.n_before = c0;
      f.window = window(il);
      f.softcap = hp.attn_softcap;
      half_gemm ? flash_attention_tc(f, st) : flash_attention(f, st);
      const int64_t wb = N - n_win, w0 = std::max<int64_t>(c0, wb);  // window rows in this chunk
      if (w0 < c0 + T)
        check(cudaMemcpyAsync(qwin.get() + (w0 - wb) * nh * hd, q.get() + (w0 - c0) * nh * hd,
                              (c0 + T - w0) * nh * hd * sizeof(float), cudaMemcpyDeviceToDevice, st), "window queries");
      if (fit && w0 < c0 + T)
        check(cudaMemcpyAsync(owin.get() + (w0 - wb) * nh * hd, att.get() + (w0 - c0) * nh * hd,
                              (c0 + T - w0) * nh * hd * sizeof(float), cudaMemcpyDeviceToDevice, st), "window outputs");
      attn_out(L, T, xc);
      mlp(L, xc, T);
      if (half_gemm) f32_to_f16(xc, Xh.get() + c0 * d, T * d, st);
    }
    select_layer(il, N, n_prompt, lk, lv, qwin.get(), raw.get(), pooled.get(), rowstat.get(), runs.get(), flags.get(),
                 list.get(), count.get(), fit ? &fb : nullptr);
  }
  const int64_t rows = all_logits ? n_prompt : 1;  // logits_h was sized by eval() before the prompt ran
  for (int64_t r0 = n_prompt - rows; r0 < n_prompt; r0 += ub) {
    const int64_t R = std::min<int64_t>(ub, n_prompt - r0);
    if (half_gemm) f16_to_f32(Xh.get() + r0 * d, x.get(), R * d, st);
    head(half_gemm ? x.get() : X.get() + r0 * d, R);
    fetch_logits(R, logits_h.data() + (r0 - (n_prompt - rows)) * hp.n_vocab);
    check(cudaStreamSynchronize(st), "logits");
  }
  // Host mirrors of the arena layout (Ada-KV re-split layers on the device).
  check(cudaMemcpyAsync(h_off.data(), seg_off.get(), h_off.size() * sizeof(int64_t), cudaMemcpyDeviceToHost, st), "offsets");
  check(cudaMemcpyAsync(h_used.data(), used.get(), h_used.size() * sizeof(int32_t), cudaMemcpyDeviceToHost, st), "counts");
  check(cudaStreamSynchronize(st), "compressed prefill");
  if (layer_pooled()) build_items();
}

}  // namespace headkv
