// The tiled attention of attention_tiled.cuh with its matrix products on tensor cores, in TF32
// (inputs rounded to a 10-bit mantissa, float accumulation): used when the thread's CUDA context
// allows TF32 (milora-finetune --tf32, which already puts every other float product there), so
// the attention's products follow the same precision rule as the rest of the model.
//
// Same blocks, same tiles, same formulas, same single writer per output element. What changes:
//   - each 64 x 64 product of a tile pair (scores, dO . v) is eight warps' WMMA fragments
//     (16 x 16 x 8), stored to shared memory; the mask, scale, softmax step and dS = P (dP - D)
//     then run element-wise on that shared tile;
//   - the products into the outputs are WMMA too. dk, dv and dq are plain sums over tiles, so
//     they stay in accumulator fragments across the loop and go through shared memory once at the
//     end (rows past the sequence are not written). The forward's output is rescaled per row at
//     every key tile (online softmax), and a fragment's element-to-row map is not specified, so
//     each tile's P . V goes through shared memory and is added to per-thread registers there.
// Staged rows are D + 8 floats apart (WMMA wants 32-byte aligned rows; 8 banks apart).
#pragma once

#if !defined(__CUDACC__)
#error "attention_tensor_core.cuh needs nvcc"
#endif

#include <mma.h>

#include "attention_tiled.cuh"

namespace llama::cuda_launch::tiled::tensor_core {

using namespace nvcuda;

template <int D>
struct Layout {
  static constexpr int ld = D + 8;                 // a staged 64 x D tile's row stride
  static constexpr int tile = kTile * ld;
  static constexpr int sld = kTile + 8;            // a 64 x 64 score tile's row stride
  static constexpr int scores = kTile * sld;
  static constexpr int out_frags = 4 * (D / 16);   // 16 x 16 fragments of a 64 x D output
  static constexpr int per_warp = (out_frags + 7) / 8;
};

constexpr int kWarps = kThreads / 32;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragBT = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major>;
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;

template <class Frag>
__device__ void round_to_tf32(Frag& f) {
#pragma unroll
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = wmma::__float_to_tf32(f.x[e]);
}

/// out (64 x 64) = x (64 x D) . y (64 x D)^T, both staged; warp w computes fragments w and w + 8.
template <int D>
__device__ void scores(const float* x, const float* y, float* out) {
  using L = Layout<D>;
  for (int f = int(threadIdx.x) / 32; f < 16; f += kWarps) {
    const int fi = f / 4, fj = f % 4;
    FragC c;
    wmma::fill_fragment(c, 0.f);
#pragma unroll
    for (int k = 0; k < D; k += 8) {
      FragA a;
      FragBT b;
      wmma::load_matrix_sync(a, x + fi * 16 * L::ld + k, L::ld);
      wmma::load_matrix_sync(b, y + fj * 16 * L::ld + k, L::ld);  // y^T, column-major, is y row-major
      round_to_tf32(a);
      round_to_tf32(b);
      wmma::mma_sync(c, a, b, c);
    }
    wmma::store_matrix_sync(out + fi * 16 * L::sld + fj * 16, c, L::sld, wmma::mem_row_major);
  }
}

/// acc += p (64 x 64 score tile) . y (64 x D staged) for the output fragments this warp owns
/// (fragment warp + 8 t; with D = 16 or 32 some warps own none).
template <int D>
__device__ void product(const float* p, const float* y, FragC (&acc)[Layout<D>::per_warp]) {
  using L = Layout<D>;
#pragma unroll
  for (int t = 0; t < L::per_warp; ++t) {
    const int f = int(threadIdx.x) / 32 + kWarps * t;
    if (f >= L::out_frags) break;
    const int fi = f / (D / 16), fj = f % (D / 16);
#pragma unroll
    for (int k = 0; k < kTile; k += 8) {
      FragA a;
      FragB b;
      wmma::load_matrix_sync(a, p + fi * 16 * L::sld + k, L::sld);
      wmma::load_matrix_sync(b, y + k * L::ld + fj * 16, L::ld);
      round_to_tf32(a);
      round_to_tf32(b);
      wmma::mma_sync(acc[t], a, b, acc[t]);
    }
  }
}

template <int D>
__device__ void clear(FragC (&acc)[Layout<D>::per_warp]) {
#pragma unroll
  for (int t = 0; t < Layout<D>::per_warp; ++t) wmma::fill_fragment(acc[t], 0.f);
}

/// The owned fragments into a staged 64 x D tile.
template <int D>
__device__ void store(const FragC (&acc)[Layout<D>::per_warp], float* out) {
  using L = Layout<D>;
#pragma unroll
  for (int t = 0; t < L::per_warp; ++t) {
    const int f = int(threadIdx.x) / 32 + kWarps * t;
    if (f >= L::out_frags) break;
    wmma::store_matrix_sync(out + (f / (D / 16)) * 16 * L::ld + (f % (D / 16)) * 16, acc[t], L::ld, wmma::mem_row_major);
  }
}

/// Rows [row0, row0 + 64) below `rows` of a staged tile, times k, into columns col0.. of m.
template <int D>
__device__ void write_staged(const float* t, float k, float* m, Index ld, Index row0, Index rows, Index col0) {
  for (int e = int(threadIdx.x); e < kTile * D; e += kThreads) {
    const int r = e / D, c = e % D;
    if (row0 + r < rows) m[(row0 + r) * ld + col0 + c] = t[r * Layout<D>::ld + c] * k;
  }
}

// Grid and meaning as tiled::forward_kernel.
template <int D>
__global__ void __launch_bounds__(kThreads) forward_kernel(rows::FusedAttention<float> f, float* out, Index ld_out,
                                                           float* lse) {
  using L = Layout<D>;
  extern __shared__ __align__(128) float smem[];
  float* qs = smem;
  float* ks = qs + L::tile;
  float* vs = ks + L::tile;
  float* pv = vs + L::tile;
  float* ps = pv + L::tile;
  float* rescale = ps + L::scores;
  float* row_max = rescale + kTile;
  float* row_sum = row_max + kTile;
  const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
  const Index qt = blockIdx.x, b = Index(blockIdx.y) / f.heads, h = Index(blockIdx.y) % f.heads;
  const Index base = b * f.seq, q0 = qt * kTile, qc = h * D, kc = h / f.group() * D;
  const float scale = float(f.scale);
  stage<D, L::ld>(f.q.row(base), f.q.ld, q0, f.seq, qc, qs);

  float o[kPer][D / kGrid] = {};
  const int srow = int(threadIdx.x) / 4, spart = int(threadIdx.x) % 4;
  float m = -INFINITY, l = 0;
  for (Index kt = 0; kt <= qt; ++kt) {
    const Index k0 = kt * kTile;
    __syncthreads();
    stage<D, L::ld>(f.k.row(base), f.k.ld, k0, f.seq, kc, ks);
    stage<D, L::ld>(f.v.row(base), f.v.ld, k0, f.seq, kc, vs);
    __syncthreads();
    scores<D>(qs, ks, ps);
    __syncthreads();
    float* pr = ps + srow * L::sld;
    const Index i = q0 + srow;
    for (int j = spart; j < kTile; j += 4) {  // the raw products: scale and mask (tiled's scores do it in registers)
      const Index jj = k0 + j;
      pr[j] = jj <= i && jj < f.seq ? pr[j] * scale : -INFINITY;
    }
    const float alpha = online_softmax_step(pr, m, l);
    if (spart == 0) rescale[srow] = alpha;
    __syncthreads();
    {
      FragC acc[L::per_warp];
      clear<D>(acc);
      product<D>(ps, vs, acc);
      store<D>(acc, pv);
    }
    __syncthreads();
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
      const int row = ty + kGrid * a;
      const float alpha_a = rescale[row];
#pragma unroll
      for (int c = 0; c < D / kGrid; ++c) o[a][c] = o[a][c] * alpha_a + pv[row * L::ld + tx + kGrid * c];
    }
  }
  finish_forward<D>(o, m, l, row_max, row_sum, f, out, ld_out, lse, b, h, q0);
}

/// s and dp (raw products, rows x cols = keys x queries when keys_are_rows) into P and dS, in place.
template <bool keys_are_rows, int D>
__device__ void probabilities(float* ps, float* dss, const float* lse_s, const float* delta_s, Index q0, Index k0, Index seq,
                              float scale) {
  constexpr int sld = Layout<D>::sld;
  for (int e = int(threadIdx.x); e < kTile * kTile; e += kThreads) {
    const int row = e / kTile, col = e % kTile, qi = keys_are_rows ? col : row;
    const Index i = q0 + qi, j = k0 + (keys_are_rows ? row : col);
    const float p = i < seq && j <= i ? expf(ps[row * sld + col] * scale - lse_s[qi]) : 0.f;
    ps[row * sld + col] = p;
    dss[row * sld + col] = p * (dss[row * sld + col] - delta_s[qi]);
  }
}

// Grid and meaning as tiled::dkv_kernel.
template <int D>
__global__ void __launch_bounds__(kThreads) dkv_kernel(rows::FusedAttention<float> f, const float* dout, Index ld_do,
                                                       const float* lse, const float* delta, bool per_head, float* dk,
                                                       Index ld_dk, float* dv, Index ld_dv) {
  using L = Layout<D>;
  extern __shared__ __align__(128) float smem[];
  float* ks = smem;
  float* vs = ks + L::tile;
  float* qs = vs + L::tile;
  float* dos = qs + L::tile;
  float* ps = dos + L::tile;
  float* dss = ps + L::scores;
  float* lse_s = dss + L::scores;
  float* delta_s = lse_s + kTile;
  const Index kt = blockIdx.x, b = Index(blockIdx.y) / f.heads, h = Index(blockIdx.y) % f.heads, g = h / f.group();
  const Index base = b * f.seq, k0 = kt * kTile, kc = g * D, qc = h * D, tiles = (f.seq + kTile - 1) / kTile;
  const float scale = float(f.scale);
  stage<D, L::ld>(f.k.row(base), f.k.ld, k0, f.seq, kc, ks);
  stage<D, L::ld>(f.v.row(base), f.v.ld, k0, f.seq, kc, vs);
  FragC gk[L::per_warp], gv[L::per_warp];
  clear<D>(gk);
  clear<D>(gv);
  for (Index qt = kt; qt < tiles; ++qt) {
    const Index q0 = qt * kTile;
    __syncthreads();
    stage<D, L::ld>(f.q.row(base), f.q.ld, q0, f.seq, qc, qs);
    stage<D, L::ld>(dout + base * ld_do, ld_do, q0, f.seq, qc, dos);
    stage_row_stats(lse, delta, (b * f.heads + h) * f.seq, q0, f.seq, lse_s, delta_s);
    __syncthreads();
    scores<D>(ks, qs, ps);
    scores<D>(vs, dos, dss);
    __syncthreads();
    probabilities<true, D>(ps, dss, lse_s, delta_s, q0, k0, f.seq, scale);
    __syncthreads();
    product<D>(ps, dos, gv);
    product<D>(dss, qs, gk);
  }
  const Index oc = per_head ? qc : kc;
  __syncthreads();  // qs and dos are free
  store<D>(gk, qs);
  store<D>(gv, dos);
  __syncthreads();
  write_staged<D>(qs, scale, dk + base * ld_dk, ld_dk, k0, f.seq, oc);
  write_staged<D>(dos, 1.f, dv + base * ld_dv, ld_dv, k0, f.seq, oc);
}

// Grid and meaning as tiled::dq_kernel.
template <int D>
__global__ void __launch_bounds__(kThreads) dq_kernel(rows::FusedAttention<float> f, const float* dout, Index ld_do,
                                                      const float* lse, const float* delta, float* dq, Index ld_dq) {
  using L = Layout<D>;
  extern __shared__ __align__(128) float smem[];
  float* qs = smem;
  float* dos = qs + L::tile;
  float* ks = dos + L::tile;
  float* vs = ks + L::tile;
  float* ps = vs + L::tile;
  float* dss = ps + L::scores;
  float* lse_s = dss + L::scores;
  float* delta_s = lse_s + kTile;
  const Index qt = blockIdx.x, b = Index(blockIdx.y) / f.heads, h = Index(blockIdx.y) % f.heads;
  const Index base = b * f.seq, q0 = qt * kTile, qc = h * D, kc = h / f.group() * D;
  const float scale = float(f.scale);
  stage<D, L::ld>(f.q.row(base), f.q.ld, q0, f.seq, qc, qs);
  stage<D, L::ld>(dout + base * ld_do, ld_do, q0, f.seq, qc, dos);
  stage_row_stats(lse, delta, (b * f.heads + h) * f.seq, q0, f.seq, lse_s, delta_s);
  FragC gq[L::per_warp];
  clear<D>(gq);
  for (Index kt = 0; kt <= qt; ++kt) {
    const Index k0 = kt * kTile;
    __syncthreads();
    stage<D, L::ld>(f.k.row(base), f.k.ld, k0, f.seq, kc, ks);
    stage<D, L::ld>(f.v.row(base), f.v.ld, k0, f.seq, kc, vs);
    __syncthreads();
    scores<D>(qs, ks, ps);
    scores<D>(dos, vs, dss);
    __syncthreads();
    probabilities<false, D>(ps, dss, lse_s, delta_s, q0, k0, f.seq, scale);
    __syncthreads();
    product<D>(dss, ks, gq);
  }
  __syncthreads();  // ks is free
  store<D>(gq, ks);
  __syncthreads();
  write_staged<D>(ks, scale, dq + base * ld_dq, ld_dq, q0, f.seq, qc);
}

template <int D>
Schedule schedule() {
  using L = Layout<D>;
  return {forward_kernel<D>, sizeof(float) * (4 * L::tile + L::scores + 3 * kTile), "llama attention forward (tensor cores)",
          dkv_kernel<D>,     sizeof(float) * (4 * L::tile + 2 * L::scores + 2 * kTile), "llama attention dk dv (tensor cores)",
          dq_kernel<D>,      sizeof(float) * (4 * L::tile + 2 * L::scores + 2 * kTile), "llama attention dq (tensor cores)"};
}

}  // namespace llama::cuda_launch::tiled::tensor_core
