// CudaCores: the tiled attention's products (attention_tiled.cuh) as float FMAs on CUDA cores. The
// 256 threads form a 16 x 16 grid; thread (ty, tx) holds rows ty + 16 a and columns tx + 16 b of a
// 64 x 64 score tile and rows ty + 16 a, columns tx + 16 c of a 64 x D accumulator, in registers.
// The scores of a tile pair are masked and scaled in registers before they reach shared memory.
// Staged rows are D + 1 floats apart and score rows 65: a column walk then hits distinct banks.
#pragma once

#include "attention_tiled.cuh"

namespace llama::cuda_launch::tiled {

struct CudaCores {
  static constexpr const char* label = "tiled";
  static constexpr bool forward_pv_tile = false;  // P . V goes straight into the output's registers
  static constexpr int dq_score_tiles = 1;         // dq needs dS alone
  template <int D>
  using Layout = TileLayout<D, 1, 1>;  // one float of padding: a column walk hits distinct banks
  template <int D>
  struct Acc {
    float v[kPer][D / kGrid];
  };

  template <int D>
  __device__ static void clear(Acc<D>& acc) {
#pragma unroll
    for (int a = 0; a < kPer; ++a)
#pragma unroll
      for (int c = 0; c < D / kGrid; ++c) acc.v[a][c] = 0.f;
  }

  /// s[a][b] += sum_d x[ty + 16a][d] * y[tx + 16b][d] for two staged 64 x D tiles.
  template <int D>
  __device__ static void products(const float* x, const float* y, float (&s)[kPer][kPer]) {
    constexpr int ld = Layout<D>::ld;
    const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
#pragma unroll 4
    for (int d = 0; d < D; ++d) {
      float xa[kPer], yb[kPer];
#pragma unroll
      for (int a = 0; a < kPer; ++a) {
        xa[a] = x[(ty + kGrid * a) * ld + d];
        yb[a] = y[(tx + kGrid * a) * ld + d];
      }
#pragma unroll
      for (int a = 0; a < kPer; ++a)
#pragma unroll
        for (int b = 0; b < kPer; ++b) s[a][b] += xa[a] * yb[b];
    }
  }

  /// acc[a][c] += sum_j p[ty + 16a][j] * y[j][tx + 16c]: a 64 x 64 score tile times a staged 64 x D tile.
  template <int D>
  __device__ static void times_tile(const float* p, const float* y, float (&acc)[kPer][D / kGrid]) {
    constexpr int ld = Layout<D>::ld, sld = Layout<D>::sld, cols = D / kGrid;
    const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
#pragma unroll 4
    for (int j = 0; j < kTile; ++j) {
      float pa[kPer], yc[cols];
#pragma unroll
      for (int a = 0; a < kPer; ++a) pa[a] = p[(ty + kGrid * a) * sld + j];
#pragma unroll
      for (int c = 0; c < cols; ++c) yc[c] = y[j * ld + tx + kGrid * c];
#pragma unroll
      for (int a = 0; a < kPer; ++a)
#pragma unroll
        for (int c = 0; c < cols; ++c) acc[a][c] += pa[a] * yc[c];
    }
  }
  template <int D>
  __device__ static void accumulate(Acc<D>& acc, const float* p, const float* y) {
    times_tile<D>(p, y, acc.v);
  }
  template <int D>
  __device__ static void write(const Acc<D>& acc, float k, float* m, Index ld, Index row0, Index rows, Index col0, float*) {
    write_rows<D>(acc.v, k, m, ld, row0, rows, col0);
  }

  /// The forward's scores, masked (keys after the query, or past the sequence) and scaled here.
  template <int D>
  __device__ static void scores(const float* qs, const float* ks, float* ps, Index q0, Index k0, Index seq, float scale) {
    constexpr int sld = Layout<D>::sld;
    const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
    float s[kPer][kPer] = {};
    products<D>(qs, ks, s);
#pragma unroll
    for (int a = 0; a < kPer; ++a)
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const Index i = q0 + ty + kGrid * a, j = k0 + tx + kGrid * c;
        ps[(ty + kGrid * a) * sld + tx + kGrid * c] = j <= i && j < seq ? s[a][c] * scale : -INFINITY;
      }
  }
  template <int D>
  __device__ static void mask_row(float*, Index, Index, Index, float, int) {}  // scores() masked them

  /// o = o * rescale[row] + P . V.
  template <int D>
  __device__ static void add_pv(float (&o)[kPer][D / kGrid], const float* rescale, const float* ps, const float* vs, float*) {
    const int ty = int(threadIdx.x) / kGrid;
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
      const float alpha_a = rescale[ty + kGrid * a];
#pragma unroll
      for (int c = 0; c < D / kGrid; ++c) o[a][c] *= alpha_a;
    }
    times_tile<D>(ps, vs, o);
  }

  /// P = exp(s - L) and dS = P (dP - D) of a 64 x 64 tile pair from the products s = x . y^T
  /// (unscaled) and dp = u . z^T, computed in registers; rows x cols is (keys x queries) when
  /// keys_are_rows, else (queries x keys). lse_s and delta_s hold the query tile's L and D.
  template <bool keys_are_rows, int D>
  __device__ static void probabilities(const float* x, const float* y, const float* u, const float* z, const float* lse_s,
                                       const float* delta_s, Index q0, Index k0, Index seq, float scale, float* ps,
                                       float* dss) {
    constexpr int sld = Layout<D>::sld;
    const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
    float s[kPer][kPer] = {}, dp[kPer][kPer] = {};
    products<D>(x, y, s);
    products<D>(u, z, dp);
#pragma unroll
    for (int a = 0; a < kPer; ++a)
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const int row = ty + kGrid * a, col = tx + kGrid * c, qi = keys_are_rows ? col : row;
        const Index i = q0 + (keys_are_rows ? col : row), j = k0 + (keys_are_rows ? row : col);
        const float p = i < seq && j <= i ? expf(s[a][c] * scale - lse_s[qi]) : 0.f;
        if (ps != nullptr) ps[row * sld + col] = p;
        dss[row * sld + col] = p * (dp[a][c] - delta_s[qi]);
      }
  }
};

}  // namespace llama::cuda_launch::tiled
