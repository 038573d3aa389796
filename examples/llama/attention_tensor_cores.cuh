// TensorCores: the tiled attention's products (attention_tiled.cuh) on tensor cores, in TF32
// (inputs rounded to a 10-bit mantissa, float accumulation): used when the thread's CUDA context
// allows TF32 (milora-finetune --tf32, which already puts every other float product there), so
// the attention's products follow the same precision rule as the rest of the model.
//
//   - each 64 x 64 product of a tile pair (scores, dO . v) is eight warps' WMMA fragments
//     (16 x 16 x 8), stored raw to shared memory; the mask, scale and dS = P (dP - D) then run
//     element-wise on that shared tile;
//   - the products into the outputs are WMMA too. dk, dv and dq are plain sums over tiles, so
//     they stay in accumulator fragments across the loop and go through shared memory once at the
//     end (rows past the sequence are not written). The forward's output is rescaled per row at
//     every key tile (online softmax), and a fragment's element-to-row map is not specified, so
//     each tile's P . V goes through a shared scratch tile and is added to per-thread registers.
// Staged rows are D + 8 floats apart (WMMA wants 32-byte aligned rows; 8 banks apart).
#pragma once

#include <mma.h>

#include "attention_tiled.cuh"

namespace llama::cuda_launch::tiled {

struct TensorCores {
  static constexpr const char* label = "tensor cores";
  static constexpr bool forward_pv_tile = true;  // P . V passes through shared memory (see above)
  static constexpr int dq_score_tiles = 2;        // the raw scores and dP, then P and dS in place

  static constexpr int kWarps = kThreads / 32;
  using FragA = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32, nvcuda::wmma::row_major>;
  using FragBT = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 8, nvcuda::wmma::precision::tf32, nvcuda::wmma::col_major>;
  using FragB = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 8, nvcuda::wmma::precision::tf32, nvcuda::wmma::row_major>;
  using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float>;

  template <int D>
  struct Layout : TileLayout<D, 8, 8> {               // rows 32 bytes apart, as WMMA loads want
    static constexpr int out_frags = 4 * (D / 16);   // 16 x 16 fragments of a 64 x D output
    static constexpr int per_warp = (out_frags + 7) / 8;
  };
  /// The output fragments this warp owns: fragment warp + 8 t (with D = 16 or 32 some warps own none).
  template <int D>
  struct Acc {
    FragC frag[Layout<D>::per_warp];
  };

  template <class Frag>
  __device__ static void round_to_tf32(Frag& f) {
#pragma unroll
    for (int e = 0; e < f.num_elements; ++e) f.x[e] = nvcuda::wmma::__float_to_tf32(f.x[e]);
  }

  /// out (64 x 64) = x (64 x D) . y (64 x D)^T, both staged; warp w computes fragments w and w + 8.
  template <int D>
  __device__ static void products(const float* x, const float* y, float* out) {
    using L = Layout<D>;
    for (int f = int(threadIdx.x) / 32; f < 16; f += kWarps) {
      const int fi = f / 4, fj = f % 4;
      FragC c;
      nvcuda::wmma::fill_fragment(c, 0.f);
#pragma unroll
      for (int k = 0; k < D; k += 8) {
        FragA a;
        FragBT b;
        nvcuda::wmma::load_matrix_sync(a, x + fi * 16 * L::ld + k, L::ld);
        nvcuda::wmma::load_matrix_sync(b, y + fj * 16 * L::ld + k, L::ld);  // y^T, column-major, is y row-major
        round_to_tf32(a);
        round_to_tf32(b);
        nvcuda::wmma::mma_sync(c, a, b, c);
      }
      nvcuda::wmma::store_matrix_sync(out + fi * 16 * L::sld + fj * 16, c, L::sld, nvcuda::wmma::mem_row_major);
    }
  }

  template <int D>
  __device__ static void clear(Acc<D>& acc) {
#pragma unroll
    for (int t = 0; t < Layout<D>::per_warp; ++t) nvcuda::wmma::fill_fragment(acc.frag[t], 0.f);
  }

  /// acc += p (64 x 64 score tile) . y (64 x D staged) for the output fragments this warp owns.
  template <int D>
  __device__ static void accumulate(Acc<D>& acc, const float* p, const float* y) {
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
        nvcuda::wmma::load_matrix_sync(a, p + fi * 16 * L::sld + k, L::sld);
        nvcuda::wmma::load_matrix_sync(b, y + k * L::ld + fj * 16, L::ld);
        round_to_tf32(a);
        round_to_tf32(b);
        nvcuda::wmma::mma_sync(acc.frag[t], a, b, acc.frag[t]);
      }
    }
  }

  /// The owned fragments into a staged 64 x D tile.
  template <int D>
  __device__ static void store(const Acc<D>& acc, float* out) {
    using L = Layout<D>;
#pragma unroll
    for (int t = 0; t < L::per_warp; ++t) {
      const int f = int(threadIdx.x) / 32 + kWarps * t;
      if (f >= L::out_frags) break;
      nvcuda::wmma::store_matrix_sync(out + (f / (D / 16)) * 16 * L::ld + (f % (D / 16)) * 16, acc.frag[t], L::ld,
                                      nvcuda::wmma::mem_row_major);
    }
  }

  /// Through `scratch` (a staged tile the block no longer reads): rows [row0, row0 + 64) below
  /// `rows`, times k, into columns col0.. of m.
  template <int D>
  __device__ static void write(const Acc<D>& acc, float k, float* m, Index ld, Index row0, Index rows, Index col0,
                               float* scratch) {
    __syncthreads();  // every warp is done reading scratch
    store<D>(acc, scratch);
    __syncthreads();
    for (int e = int(threadIdx.x); e < kTile * D; e += kThreads) {
      const int r = e / D, c = e % D;
      if (row0 + r < rows) m[(row0 + r) * ld + col0 + c] = scratch[r * Layout<D>::ld + c] * k;
    }
  }

  /// The forward's raw scores; mask_row scales and masks them row by row before the softmax.
  template <int D>
  __device__ static void scores(const float* qs, const float* ks, float* ps, Index, Index, Index, float) {
    products<D>(qs, ks, ps);
  }
  template <int D>
  __device__ static void mask_row(float* pr, Index i, Index k0, Index seq, float scale, int part) {
    for (int j = part; j < kTile; j += 4) {
      const Index jj = k0 + j;
      pr[j] = jj <= i && jj < seq ? pr[j] * scale : -INFINITY;
    }
  }

  /// o = o * rescale[row] + P . V, the product through the scratch tile pv.
  template <int D>
  __device__ static void add_pv(float (&o)[kPer][D / kGrid], const float* rescale, const float* ps, const float* vs, float* pv) {
    using L = Layout<D>;
    {
      Acc<D> acc;
      clear<D>(acc);
      accumulate<D>(acc, ps, vs);
      store<D>(acc, pv);
    }
    __syncthreads();
    const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
      const int row = ty + kGrid * a;
      const float alpha_a = rescale[row];
#pragma unroll
      for (int c = 0; c < D / kGrid; ++c) o[a][c] = o[a][c] * alpha_a + pv[row * L::ld + tx + kGrid * c];
    }
  }

  /// The raw products x . y^T into ps and u . z^T into dss, then P and dS in place (rows x cols =
  /// keys x queries when keys_are_rows).
  template <bool keys_are_rows, int D>
  __device__ static void probabilities(const float* x, const float* y, const float* u, const float* z, const float* lse_s,
                                       const float* delta_s, Index q0, Index k0, Index seq, float scale, float* ps,
                                       float* dss) {
    constexpr int sld = Layout<D>::sld;
    products<D>(x, y, ps);
    products<D>(u, z, dss);
    __syncthreads();
    for (int e = int(threadIdx.x); e < kTile * kTile; e += kThreads) {
      const int row = e / kTile, col = e % kTile, qi = keys_are_rows ? col : row;
      const Index i = q0 + qi, j = k0 + (keys_are_rows ? row : col);
      const float p = i < seq && j <= i ? expf(ps[row * sld + col] * scale - lse_s[qi]) : 0.f;
      ps[row * sld + col] = p;
      dss[row * sld + col] = p * (dss[row * sld + col] - delta_s[qi]);
    }
  }
};

}  // namespace llama::cuda_launch::tiled
