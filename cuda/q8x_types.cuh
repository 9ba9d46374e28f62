// Per weight type, one lane's share of an int8-activation dot product (matvec_q8x.cu): an item of
// `per` consecutive blocks of 32 weights, loaded into registers (load, before the x it needs is
// read) and dotted with x quantized to int8 blocks (xq: two int4 per block; xd: (dx, dx·Σxq) per
// block) through dp4a. Items are numbered along the row: item i covers blocks per*i .. per*i+per-1.
//   Q4_0: d·(dx·Σq·xq − 8·dx·Σxq)      Q4_1: d·dx·Σq·xq + m·dx·Σxq      Q8_0: d·dx·Σq·xq
//   Q4_K, Q5_K (2 blocks j of a super-block): Σ_j d·sc_j·dx_j·Σq·xq − dmin·m_j·dx_j·Σxq
//   Q6_K (blocks k and k + 2 of a half super-block, scales per 16): d·dx_j·Σ_half sc·Σ(q − 32)·xq
// h: lanes 4..7 of each quarter warp read their two 16-byte x halves in the other order, so 8
// lanes cover 32 distinct shared-memory banks (the one-block types).
#pragma once
#include <cuda_fp16.h>

#include <cstdint>

#include "quant.cuh"

namespace headkv::cu {

__device__ __forceinline__ float lo_f16(uint32_t v) { return __half2float(__ushort_as_half((unsigned short)(v & 0xFFFFu))); }

template <int T> struct Q8;

// s + Σ over 4 words of v[k] (4 int8 weights each) times 16 int8 x.
__device__ __forceinline__ int dot4(const uint32_t* v, int4 x, int s) {
  s = __dp4a((int)v[0], x.x, s);
  s = __dp4a((int)v[1], x.y, s);
  s = __dp4a((int)v[2], x.z, s);
  return __dp4a((int)v[3], x.w, s);
}
// The one-block types (split layout: 16 or 32 bytes of quants, the fp16 scale(s) elsewhere); D
// gives idot (the integer dot of a block) and combine (its scales).
template <int T, int kWords, class D>
struct Q8One {
  using F = Fmt<T>;
  static constexpr int per = 1, words = kWords;  // 16-byte words of quants per block
  struct W {
    uint4 q[kWords];
    uint32_t sc;
  };
  __device__ __forceinline__ static const void* addr(const uint8_t* q, int64_t it) {
    return reinterpret_cast<const uint4*>(q) + it * kWords;
  }
  __device__ __forceinline__ static void load(W& w, const uint8_t* q, const uint8_t* s, int64_t it) {
#pragma unroll
    for (int k = 0; k < kWords; ++k) w.q[k] = __ldg(reinterpret_cast<const uint4*>(q) + it * kWords + k);
    w.sc = F::sb == 4 ? __ldg(reinterpret_cast<const uint32_t*>(s) + it) : __ldg(reinterpret_cast<const uint16_t*>(s) + it);
  }
  __device__ __forceinline__ float operator()(const W& w, const int4* xq, const float2* xd, int64_t it, int h) const {
    const int4 xf = xq[2 * it + h], xs = xq[2 * it + 1 - h];
    const int4 xa = h ? xs : xf, xb = h ? xf : xs;
    return D::combine(D::idot(w.q, xa, xb), w.sc, xd[it]);
  }
};

// 32 nibbles (bytes of q) against 32 int8 x: the low nibbles are elements 0..15 and the high ones
// 16..31 (Q4_0 / Q4_1 byte order).
__device__ __forceinline__ int dot_nib(const uint4& q, int4 xa, int4 xb) {
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
  const int lo[4] = {xa.x, xa.y, xa.z, xa.w}, hi[4] = {xb.x, xb.y, xb.z, xb.w};
  int s = 0;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    s = __dp4a((int)(w[k] & 0x0F0F0F0Fu), lo[k], s);
    s = __dp4a((int)((w[k] >> 4) & 0x0F0F0F0Fu), hi[k], s);
  }
  return s;
}

template <> struct Q8<T_Q4_0> : Q8One<T_Q4_0, 1, Q8<T_Q4_0>> {
  __device__ __forceinline__ static int idot(const uint4* q, int4 xa, int4 xb) { return dot_nib(q[0], xa, xb); }
  __device__ __forceinline__ static float combine(int s, uint32_t sc, float2 dx) {
    return lo_f16(sc) * (dx.x * (float)s - 8.0f * dx.y);
  }
};

template <> struct Q8<T_Q4_1> : Q8One<T_Q4_1, 1, Q8<T_Q4_1>> {
  __device__ __forceinline__ static int idot(const uint4* q, int4 xa, int4 xb) { return dot_nib(q[0], xa, xb); }
  __device__ __forceinline__ static float combine(int s, uint32_t sc, float2 dx) {  // sc: scale | min << 16
    return lo_f16(sc) * dx.x * (float)s + lo_f16(sc >> 16) * dx.y;
  }
};

template <> struct Q8<T_Q8_0> : Q8One<T_Q8_0, 2, Q8<T_Q8_0>> {
  __device__ __forceinline__ static int idot(const uint4* q, int4 xa, int4 xb) {
    const uint32_t a[4] = {q[0].x, q[0].y, q[0].z, q[0].w}, b[4] = {q[1].x, q[1].y, q[1].z, q[1].w};
    return dot4(b, xb, dot4(a, xa, 0));
  }
  __device__ __forceinline__ static float combine(int s, uint32_t sc, float2 dx) { return lo_f16(sc) * dx.x * (float)s; }
};

// Σ over 8 words of v[k] times the 32 int8 x of block b.
__device__ __forceinline__ int dot8(const uint32_t* v, const int4* xq, int64_t b) {
  return dot4(v + 4, xq[2 * b + 1], dot4(v, xq[2 * b], 0));
}
__device__ __forceinline__ uint32_t byte_of(uint32_t w, int i) { return (w >> (8 * i)) & 0xFFu; }

// Q4_K / Q5_K: an item is blocks 2i and 2i + 1 of a super-block (i = it & 3): the low and high
// nibbles of qs[32i .. 32i + 31] (and bits 2i, 2i + 1 of qh), with the 16-byte header.
template <bool Q5>
struct Q8K45 {
  static constexpr int per = 2, bytes = Q5 ? 176 : 144;
  struct W {
    uint4 hdr, q[2], qh[Q5 ? 2 : 1];
  };
  __device__ __forceinline__ static const void* addr(const uint8_t* q, int64_t it) {
    return q + (it >> 2) * bytes + (Q5 ? 48 : 16) + 32 * (it & 3);
  }
  __device__ __forceinline__ static void load(W& w, const uint8_t* q, const uint8_t*, int64_t it) {
    const uint8_t* u = q + (it >> 2) * bytes;
    w.hdr = __ldg(reinterpret_cast<const uint4*>(u));
    const uint4* qs = reinterpret_cast<const uint4*>(u + (Q5 ? 48 : 16) + 32 * (it & 3));
    w.q[0] = __ldg(qs);
    w.q[1] = __ldg(qs + 1);
    if constexpr (Q5) {
      w.qh[0] = __ldg(reinterpret_cast<const uint4*>(u + 16));
      w.qh[1] = __ldg(reinterpret_cast<const uint4*>(u + 32));
    }
  }
  // 6-bit scale and min of block j (0..7) from the header words y, z, w (scales[0..11]).
  __device__ __forceinline__ static void scale_min(const uint4& hd, int j, int& sc, int& m) {
    if (j < 4) {
      sc = (int)byte_of(hd.y, j) & 63;
      m = (int)byte_of(hd.z, j) & 63;
    } else {
      sc = (int)((byte_of(hd.w, j - 4) & 0xF) | ((byte_of(hd.y, j - 4) >> 6) << 4));
      m = (int)((byte_of(hd.w, j - 4) >> 4) | ((byte_of(hd.z, j - 4) >> 6) << 4));
    }
  }
  __device__ __forceinline__ float operator()(const W& w, const int4* xq, const float2* xd, int64_t it, int) const {
    const int i = (int)(it & 3), j0 = 2 * i;
    const uint32_t qw[8] = {w.q[0].x, w.q[0].y, w.q[0].z, w.q[0].w, w.q[1].x, w.q[1].y, w.q[1].z, w.q[1].w};
    uint32_t va[8], vb[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      va[k] = qw[k] & 0x0F0F0F0Fu;
      vb[k] = (qw[k] >> 4) & 0x0F0F0F0Fu;
      if constexpr (Q5) {
        const uint4& hh = w.qh[k >> 2];
        const uint32_t h = (k & 3) == 0 ? hh.x : (k & 3) == 1 ? hh.y : (k & 3) == 2 ? hh.z : hh.w;
        va[k] |= ((h >> j0) & 0x01010101u) << 4;
        vb[k] |= ((h >> (j0 + 1)) & 0x01010101u) << 4;
      }
    }
    const int64_t b = 2 * it;
    const int sa = dot8(va, xq, b), sb = dot8(vb, xq, b + 1);
    int sc0, m0, sc1, m1;
    scale_min(w.hdr, j0, sc0, m0);
    scale_min(w.hdr, j0 + 1, sc1, m1);
    const float2 da = xd[b], db = xd[b + 1];
    return lo_f16(w.hdr.x) * ((float)sc0 * da.x * (float)sa + (float)sc1 * db.x * (float)sb) -
           lo_f16(w.hdr.x >> 16) * ((float)m0 * da.y + (float)m1 * db.y);
  }
};
template <> struct Q8<T_Q4_K> : Q8K45<false> {};
template <> struct Q8<T_Q5_K> : Q8K45<true> {};

// Q6_K (split: ql | qh, 192 bytes, then scales[16] | d, 18 bytes, per super-block): an item is
// blocks k and k + 2 of half n (i = it & 3 = 2n + k): the low and high nibbles of ql[64n + 32k ..]
// with bits 2k and 2k + 4 of qh[32n ..]. Each block has two scales, one per 16 values.
template <> struct Q8<T_Q6_K> {
  static constexpr int per = 2;
  struct W {
    uint4 ql[2], qh[2];
    uint32_t sa, sb, d;  // int8 scale pairs of blocks k and k + 2; fp16 d
  };
  __device__ __forceinline__ static const void* addr(const uint8_t* q, int64_t it) {
    return q + (it >> 2) * 192 + 64 * ((it & 3) >> 1) + 32 * (it & 1);
  }
  __device__ __forceinline__ static void load(W& w, const uint8_t* q, const uint8_t* s, int64_t it) {
    const int n = (int)((it & 3) >> 1), k = (int)(it & 1);
    const uint4* ql = reinterpret_cast<const uint4*>(q + (it >> 2) * 192 + 64 * n + 32 * k);
    const uint4* qh = reinterpret_cast<const uint4*>(q + (it >> 2) * 192 + 128 + 32 * n);
    w.ql[0] = __ldg(ql);
    w.ql[1] = __ldg(ql + 1);
    w.qh[0] = __ldg(qh);
    w.qh[1] = __ldg(qh + 1);
    const uint16_t* sc = reinterpret_cast<const uint16_t*>(s + (it >> 2) * 18);
    w.sa = __ldg(sc + 4 * n + k);
    w.sb = __ldg(sc + 4 * n + k + 2);
    w.d = __ldg(sc + 8);
  }
  __device__ __forceinline__ float operator()(const W& w, const int4* xq, const float2* xd, int64_t it, int) const {
    const int k = (int)(it & 1);
    const uint32_t l[8] = {w.ql[0].x, w.ql[0].y, w.ql[0].z, w.ql[0].w, w.ql[1].x, w.ql[1].y, w.ql[1].z, w.ql[1].w};
    const uint32_t hq[8] = {w.qh[0].x, w.qh[0].y, w.qh[0].z, w.qh[0].w, w.qh[1].x, w.qh[1].y, w.qh[1].z, w.qh[1].w};
    uint32_t va[8], vb[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {  // q − 32 as int8, byte-wise
      va[i] = __vsub4((l[i] & 0x0F0F0F0Fu) | (((hq[i] >> (2 * k)) & 0x03030303u) << 4), 0x20202020u);
      vb[i] = __vsub4(((l[i] >> 4) & 0x0F0F0F0Fu) | (((hq[i] >> (2 * k + 4)) & 0x03030303u) << 4), 0x20202020u);
    }
    // blocks A = 4n + k and B = A + 2 of super-block it >> 2
    const int64_t bA = 8 * (it >> 2) + 4 * ((it & 3) >> 1) + k, bB = bA + 2;
    const int4 a0 = xq[2 * bA], a1 = xq[2 * bA + 1], b0 = xq[2 * bB], b1 = xq[2 * bB + 1];
    const int sA0 = dot4(va, a0, 0), sA1 = dot4(va + 4, a1, 0), sB0 = dot4(vb, b0, 0), sB1 = dot4(vb + 4, b1, 0);
    const int A = (int)(int8_t)(w.sa & 0xFF) * sA0 + (int)(int8_t)(w.sa >> 8) * sA1;
    const int B = (int)(int8_t)(w.sb & 0xFF) * sB0 + (int)(int8_t)(w.sb >> 8) * sB1;
    return lo_f16(w.d) * (xd[bA].x * (float)A + xd[bB].x * (float)B);
  }
};

}  // namespace headkv::cu
