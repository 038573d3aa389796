// The LLaMA's causal attention on a GPU in shared-memory tiles (flash-attention's schedule), for
// float and head_dim 16, 32, 64 or 128: included by kernels_cuda.cuh, which uses it for those and
// keeps the one-thread-per-row FusedAttention (kernels_rows.hpp) for double and other head sizes.
//
// Why: the row kernel gives each query row one thread that walks every key and adds into its
// output row in global memory, so at seq 1024 a thread makes ~10^5 scattered read-modify-writes
// and the key rows are read once per query row. On the first GPU run (H200, TinyLlama-1.1B's
// shape, batch 4 x seq 1024) it made a LoRA step take 24 s, against transformers + PEFT's 0.54 s.
// Here a block of 256 threads owns 64 query rows (or, for dk and dv, 64 key rows); key, value,
// query and output-gradient tiles of 64 rows are staged in shared memory once per block, each
// thread keeps a 4 x (head_dim / 16) piece of the accumulators in registers, and the 64 x 64
// scores of a tile pair live in shared memory between the two products that use them.
//
// The math is FusedAttention's (kernels_rows.hpp): the forward keeps a running maximum and sum per
// row (online softmax) and writes each row's logsumexp; the backward recomputes P from q, k and
// the logsumexp, with D = rowsum(dO * O) from the row kernel:
//   dk, dv: one block per (sequence, head, key tile), over the query tiles at or after the key
//           tile; with grouped heads each query head's share goes to a buffer and group_sum adds
//           the group's shares in head order;
//   dq:     one block per (sequence, head, query tile), over the key tiles at or before it.
// Every output element has one writer (no atomics), so a run repeats bit for bit. Products and
// sums are float (the row kernel's are double); tests/cuda/test_llama_parity.cpp holds both to the
// double computation of the rows. attention_tensor_core.cuh is the same schedule with the
// products on tensor cores (TF32), chosen when the context allows TF32; a Schedule names either's
// kernels for run_forward / run_backward.
#pragma once

#if !defined(__CUDACC__)
#error "attention_tiled.cuh needs nvcc"
#endif

#include <algorithm>
#include <cmath>

#include "kernel_profile.hpp"
#include "kernels_rows.hpp"
#include "milora/backend/cuda/memory.hpp"
#include "milora/backend/cuda/status.hpp"

namespace llama::cuda_launch::tiled {

using milora::Index;

constexpr int kTile = 64;                  // query and key rows per tile
constexpr int kGrid = 16;                  // a kGrid x kGrid grid of threads:
constexpr int kThreads = kGrid * kGrid;    // thread (ty, tx) holds rows ty + 16 a and columns tx + 16 b
constexpr int kPer = kTile / kGrid;        // rows (a) per thread
constexpr int kScoresLd = kTile + 1;       // padded: the column walks of a 64 x 64 tile hit distinct banks

/// The head sizes with a tiled kernel.
inline bool supports(Index head_dim) { return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128; }

template <int D>
struct Geometry {
  static constexpr int ld = D + 1;          // a staged 64 x D tile's row stride (padded, as kScoresLd)
  static constexpr int cols = D / kGrid;    // accumulator columns per thread
  static constexpr int tile = kTile * ld;   // floats of one staged tile
  static constexpr int scores = kTile * kScoresLd;
};

/// Rows [row0, row0 + 64) of the D columns from col0 of a row-major matrix into s; rows at or past
/// `rows` read as zero.
template <int D, int kStagedLd = Geometry<D>::ld>
__device__ void stage(const float* m, Index ld, Index row0, Index rows, Index col0, float* s) {
  for (int e = int(threadIdx.x); e < kTile * D; e += kThreads) {
    const int r = e / D, c = e % D;
    s[r * kStagedLd + c] = row0 + r < rows ? m[(row0 + r) * ld + col0 + c] : 0.f;
  }
}

/// acc[a][b] += sum_d x[ty + 16a][d] * y[tx + 16b][d] for two staged 64 x D tiles.
template <int D>
__device__ void scores(const float* x, const float* y, float (&acc)[kPer][kPer]) {
  constexpr int ld = Geometry<D>::ld;
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
      for (int b = 0; b < kPer; ++b) acc[a][b] += xa[a] * yb[b];
  }
}

/// acc[a][c] += sum_j p[ty + 16a][j] * y[j][tx + 16c]: a 64 x 64 score tile times a staged 64 x D tile.
template <int D>
__device__ void times_tile(const float* p, const float* y, float (&acc)[kPer][Geometry<D>::cols]) {
  constexpr int ld = Geometry<D>::ld, cols = Geometry<D>::cols;
  const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
#pragma unroll 4
  for (int j = 0; j < kTile; ++j) {
    float pa[kPer], yc[cols];
#pragma unroll
    for (int a = 0; a < kPer; ++a) pa[a] = p[(ty + kGrid * a) * kScoresLd + j];
#pragma unroll
    for (int c = 0; c < cols; ++c) yc[c] = y[j * ld + tx + kGrid * c];
#pragma unroll
    for (int a = 0; a < kPer; ++a)
#pragma unroll
      for (int c = 0; c < cols; ++c) acc[a][c] += pa[a] * yc[c];
  }
}

/// Writes acc * k into rows row0 + ty + 16a (those below `rows`), columns col0 + tx + 16c.
template <int D>
__device__ void write_rows(const float (&acc)[kPer][Geometry<D>::cols], float k, float* m, Index ld, Index row0, Index rows,
                           Index col0) {
  const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
    const Index r = row0 + ty + kGrid * a;
    if (r >= rows) continue;
#pragma unroll
    for (int c = 0; c < Geometry<D>::cols; ++c) m[r * ld + col0 + tx + kGrid * c] = acc[a][c] * k;
  }
}

__device__ inline float quad_max(float v) {  // over the 4 consecutive lanes that share a row
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ inline float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/// One key tile of the online softmax for the row that this thread's quad owns (row threadIdx.x / 4,
/// four consecutive lanes, every fourth column each): pr holds the row's scaled and masked scores
/// and gets exp(s - m_new); the running maximum m and sum l (a copy per lane) move on. Returns
/// exp(m_old - m_new), the factor that rescales what the row has accumulated so far.
__device__ inline float online_softmax_step(float* pr, float& m, float& l) {
  const int part = int(threadIdx.x) % 4;
  float mx = -INFINITY;
  for (int j = part; j < kTile; j += 4) mx = fmaxf(mx, pr[j]);
  const float m_new = fmaxf(m, quad_max(mx));
  float sum = 0;
  for (int j = part; j < kTile; j += 4) {
    const float p = m_new == -INFINITY ? 0.f : expf(pr[j] - m_new);
    pr[j] = p;
    sum += p;
  }
  const float alpha = m == -INFINITY ? 0.f : expf(m - m_new);
  l = l * alpha + quad_sum(sum);
  m = m_new;
  return alpha;
}

/// The forward's end: each row's output divided by its sum, written below the sequence's end, and
/// L = m + log l. row_max and row_sum: 64 floats of shared memory each.
template <int D>
__device__ void finish_forward(float (&o)[kPer][Geometry<D>::cols], float m, float l, float* row_max, float* row_sum,
                               const rows::FusedAttention<float>& f, float* out, Index ld_out, float* lse, Index b, Index h,
                               Index q0) {
  const int ty = int(threadIdx.x) / kGrid;
  if (threadIdx.x % 4 == 0) {
    row_max[threadIdx.x / 4] = m;
    row_sum[threadIdx.x / 4] = l;
  }
  __syncthreads();
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
    const float inv = 1.f / row_sum[ty + kGrid * a];
#pragma unroll
    for (int c = 0; c < Geometry<D>::cols; ++c) o[a][c] *= inv;
  }
  write_rows<D>(o, 1.f, out + b * f.seq * ld_out, ld_out, q0, f.seq, h * D);
  if (threadIdx.x < kTile && q0 + Index(threadIdx.x) < f.seq)
    lse[(b * f.heads + h) * f.seq + q0 + Index(threadIdx.x)] = row_max[threadIdx.x] + logf(row_sum[threadIdx.x]);
}

// Grid: (query tiles, batch * heads). Shared: q, k, v tiles, the scores, and per row the factor
// that rescales its output and its final maximum and sum.
template <int D>
__global__ void __launch_bounds__(kThreads) forward_kernel(rows::FusedAttention<float> f, float* out, Index ld_out,
                                                           float* lse) {
  using G = Geometry<D>;
  extern __shared__ float smem[];
  float* qs = smem;
  float* ks = qs + G::tile;
  float* vs = ks + G::tile;
  float* ps = vs + G::tile;
  float* rescale = ps + G::scores;
  float* row_max = rescale + kTile;
  float* row_sum = row_max + kTile;
  const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
  const Index qt = blockIdx.x, b = Index(blockIdx.y) / f.heads, h = Index(blockIdx.y) % f.heads;
  const Index base = b * f.seq, q0 = qt * kTile, qc = h * D, kc = h / f.group() * D;
  const float scale = float(f.scale);
  stage<D>(f.q.row(base), f.q.ld, q0, f.seq, qc, qs);

  float o[kPer][G::cols] = {};
  // the softmax step gives row threadIdx.x / 4 to four consecutive lanes; each keeps its own copy
  const int srow = int(threadIdx.x) / 4, spart = int(threadIdx.x) % 4;
  float m = -INFINITY, l = 0;
  for (Index kt = 0; kt <= qt; ++kt) {
    const Index k0 = kt * kTile;
    __syncthreads();  // the previous tile's k, v and scores are no longer read
    stage<D>(f.k.row(base), f.k.ld, k0, f.seq, kc, ks);
    stage<D>(f.v.row(base), f.v.ld, k0, f.seq, kc, vs);
    __syncthreads();
    float s[kPer][kPer] = {};
    scores<D>(qs, ks, s);
#pragma unroll
    for (int a = 0; a < kPer; ++a)
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const Index i = q0 + ty + kGrid * a, j = k0 + tx + kGrid * c;
        ps[(ty + kGrid * a) * kScoresLd + tx + kGrid * c] = j <= i && j < f.seq ? s[a][c] * scale : -INFINITY;
      }
    __syncthreads();
    const float alpha = online_softmax_step(ps + srow * kScoresLd, m, l);
    if (spart == 0) rescale[srow] = alpha;
    __syncthreads();
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
      const float alpha_a = rescale[ty + kGrid * a];
#pragma unroll
      for (int c = 0; c < G::cols; ++c) o[a][c] *= alpha_a;
    }
    times_tile<D>(ps, vs, o);
  }
  finish_forward<D>(o, m, l, row_max, row_sum, f, out, ld_out, lse, b, h, q0);
}

/// What the two backward kernels share: P = exp(s - L) and dS = P (dP - D) of a 64 x 64 tile pair,
/// from the products s (scores, unscaled) and dp (dO . v); rows x cols is (keys x queries) when
/// keys_are_rows, else (queries x keys). lse_s and delta_s hold the query tile's L and D.
template <bool keys_are_rows>
__device__ void probabilities(const float (&s)[kPer][kPer], const float (&dp)[kPer][kPer], const float* lse_s,
                              const float* delta_s, Index q0, Index k0, Index seq, float scale, float* ps, float* dss) {
  const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
#pragma unroll
  for (int a = 0; a < kPer; ++a)
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int row = ty + kGrid * a, col = tx + kGrid * c, qi = keys_are_rows ? col : row;
      const Index i = q0 + (keys_are_rows ? col : row), j = k0 + (keys_are_rows ? row : col);
      const float p = i < seq && j <= i ? expf(s[a][c] * scale - lse_s[qi]) : 0.f;
      if (ps != nullptr) ps[row * kScoresLd + col] = p;
      dss[row * kScoresLd + col] = p * (dp[a][c] - delta_s[qi]);
    }
}

/// The query tile's L and D into shared memory (0 past the sequence's end).
__device__ inline void stage_row_stats(const float* lse, const float* delta, Index first, Index q0, Index seq, float* lse_s,
                                       float* delta_s) {
  if (threadIdx.x < kTile) {
    const bool in = q0 + Index(threadIdx.x) < seq;
    lse_s[threadIdx.x] = in ? lse[first + q0 + Index(threadIdx.x)] : 0.f;
    delta_s[threadIdx.x] = in ? delta[first + q0 + Index(threadIdx.x)] : 0.f;
  }
}

// Grid: (key tiles, batch * heads): one query head's share of its kv head's dk and dv, written at
// column h * D of per-head buffers (or at g * D of dk, dv themselves when every kv head has one
// query head); group_sum adds the shares. One block per kv head instead would leave the first key
// tile's block 8 heads x 16 query tiles of serial work at TinyLlama's shape, and it measured 2x
// slower than dq. Shared: k, v, q, dO tiles, P and dS, the query tile's L and D.
template <int D>
__global__ void __launch_bounds__(kThreads) dkv_kernel(rows::FusedAttention<float> f, const float* dout, Index ld_do,
                                                       const float* lse, const float* delta, bool per_head, float* dk,
                                                       Index ld_dk, float* dv, Index ld_dv) {
  using G = Geometry<D>;
  extern __shared__ float smem[];
  float* ks = smem;
  float* vs = ks + G::tile;
  float* qs = vs + G::tile;
  float* dos = qs + G::tile;
  float* ps = dos + G::tile;
  float* dss = ps + G::scores;
  float* lse_s = dss + G::scores;
  float* delta_s = lse_s + kTile;
  const Index kt = blockIdx.x, b = Index(blockIdx.y) / f.heads, h = Index(blockIdx.y) % f.heads, g = h / f.group();
  const Index base = b * f.seq, k0 = kt * kTile, kc = g * D, qc = h * D, tiles = (f.seq + kTile - 1) / kTile;
  const float scale = float(f.scale);
  stage<D>(f.k.row(base), f.k.ld, k0, f.seq, kc, ks);
  stage<D>(f.v.row(base), f.v.ld, k0, f.seq, kc, vs);
  float gk[kPer][G::cols] = {}, gv[kPer][G::cols] = {};
  for (Index qt = kt; qt < tiles; ++qt) {
    const Index q0 = qt * kTile;
    __syncthreads();
    stage<D>(f.q.row(base), f.q.ld, q0, f.seq, qc, qs);
    stage<D>(dout + base * ld_do, ld_do, q0, f.seq, qc, dos);
    stage_row_stats(lse, delta, (b * f.heads + h) * f.seq, q0, f.seq, lse_s, delta_s);
    __syncthreads();
    float s[kPer][kPer] = {}, dp[kPer][kPer] = {};
    scores<D>(ks, qs, s);
    scores<D>(vs, dos, dp);
    probabilities<true>(s, dp, lse_s, delta_s, q0, k0, f.seq, scale, ps, dss);
    __syncthreads();
    times_tile<D>(ps, dos, gv);
    times_tile<D>(dss, qs, gk);
  }
  const Index oc = per_head ? qc : kc;
  write_rows<D>(gk, scale, dk + base * ld_dk, ld_dk, k0, f.seq, oc);
  write_rows<D>(gv, 1.f, dv + base * ld_dv, ld_dv, k0, f.seq, oc);
}

// out[r][g * D + d] = sum over the group's query heads u of part[r][(g * group + u) * D + d], in
// head order: a fixed order, so the sum repeats bit for bit.
template <class T>
__global__ void group_sum(const T* part, Index rows, Index heads, Index group, Index D, T* out, Index ld_out) {
  const Index cols = heads / group * D;
  for (Index e = Index(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * cols; e += Index(blockDim.x) * gridDim.x) {
    const Index r = e / cols, c = e % cols, g = c / D, d = c % D;
    T acc = 0;
    for (Index u = 0; u < group; ++u) acc += part[r * heads * D + (g * group + u) * D + d];
    out[r * ld_out + c] = acc;
  }
}

// Grid: (query tiles, batch * heads). Shared: q, dO, k, v tiles, dS, the query tile's L and D.
template <int D>
__global__ void __launch_bounds__(kThreads) dq_kernel(rows::FusedAttention<float> f, const float* dout, Index ld_do,
                                                      const float* lse, const float* delta, float* dq, Index ld_dq) {
  using G = Geometry<D>;
  extern __shared__ float smem[];
  float* qs = smem;
  float* dos = qs + G::tile;
  float* ks = dos + G::tile;
  float* vs = ks + G::tile;
  float* dss = vs + G::tile;
  float* lse_s = dss + G::scores;
  float* delta_s = lse_s + kTile;
  const Index qt = blockIdx.x, b = Index(blockIdx.y) / f.heads, h = Index(blockIdx.y) % f.heads;
  const Index base = b * f.seq, q0 = qt * kTile, qc = h * D, kc = h / f.group() * D;
  const float scale = float(f.scale);
  stage<D>(f.q.row(base), f.q.ld, q0, f.seq, qc, qs);
  stage<D>(dout + base * ld_do, ld_do, q0, f.seq, qc, dos);
  stage_row_stats(lse, delta, (b * f.heads + h) * f.seq, q0, f.seq, lse_s, delta_s);
  float gq[kPer][G::cols] = {};
  for (Index kt = 0; kt <= qt; ++kt) {
    const Index k0 = kt * kTile;
    __syncthreads();
    stage<D>(f.k.row(base), f.k.ld, k0, f.seq, kc, ks);
    stage<D>(f.v.row(base), f.v.ld, k0, f.seq, kc, vs);
    __syncthreads();
    float s[kPer][kPer] = {}, dp[kPer][kPer] = {};
    scores<D>(qs, ks, s);
    scores<D>(dos, vs, dp);
    probabilities<false>(s, dp, lse_s, delta_s, q0, k0, f.seq, scale, nullptr, dss);
    __syncthreads();
    times_tile<D>(dss, ks, gq);
  }
  write_rows<D>(gq, scale, dq + base * ld_dq, ld_dq, q0, f.seq, qc);
}

template <class Kernel, class... Args>
void launch(Kernel kernel, dim3 grid, std::size_t shared, cudaStream_t s, const char* name, Args... args) {
  // above 48 KiB a kernel's dynamic shared memory has to be asked for (Hopper gives up to 227 KiB)
  milora::cuda::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(shared)), name);
  const profile::Scope timer(name, s);
  kernel<<<grid, kThreads, shared, s>>>(args...);
  milora::cuda::check_launch(name);
}

/// Runs the dk/dv kernel (run(per_head, dk, ld_dk, dv, ld_dv)) into dk and dv directly when every kv
/// head has one query head, else into per-head buffers whose group shares group_sum then adds.
template <class RunDkv>
void per_head_dkv(const rows::FusedAttention<float>& f, Index batch, milora::cuda::DeviceView<float> dk,
                  milora::cuda::DeviceView<float> dv, cudaStream_t s, RunDkv&& run) {
  if (f.group() == 1) {
    run(false, dk.data(), dk.ld(), dv.data(), dv.ld());
    return;
  }
  const Index rows = batch * f.seq, ld = f.heads * f.head_dim;
  milora::cuda::DeviceBuffer<float> part(std::size_t(2 * rows * ld));  // stream-ordered where the device has it
  float* part_k = part.data();
  float* part_v = part_k + rows * ld;
  run(true, part_k, ld, part_v, ld);
  const unsigned blocks = unsigned(std::min<Index>((rows * f.kv_heads * f.head_dim + 255) / 256, 8192));
  const profile::Scope timer("llama attention dk dv group sum", s);
  group_sum<float><<<blocks, 256, 0, s>>>(part_k, rows, f.heads, f.group(), f.head_dim, dk.data(), dk.ld());
  group_sum<float><<<blocks, 256, 0, s>>>(part_v, rows, f.heads, f.group(), f.head_dim, dv.data(), dv.ld());
  milora::cuda::check_launch("llama attention dk dv group sum");
}

/// One schedule's three kernels and their dynamic shared memory in bytes: schedule<D>() here, and
/// tensor_core::schedule<D>() (attention_tensor_core.cuh); run_forward / run_backward launch either.
struct Schedule {
  void (*forward)(rows::FusedAttention<float>, float*, Index, float*);
  std::size_t forward_shared;
  const char* forward_name;
  void (*dkv)(rows::FusedAttention<float>, const float*, Index, const float*, const float*, bool, float*, Index, float*,
              Index);
  std::size_t dkv_shared;
  const char* dkv_name;
  void (*dq)(rows::FusedAttention<float>, const float*, Index, const float*, const float*, float*, Index);
  std::size_t dq_shared;
  const char* dq_name;
};

template <int D>
Schedule schedule() {
  using G = Geometry<D>;
  return {forward_kernel<D>, sizeof(float) * (3 * G::tile + G::scores + 3 * kTile), "llama attention forward (tiled)",
          dkv_kernel<D>,     sizeof(float) * (4 * G::tile + 2 * G::scores + 2 * kTile), "llama attention dk dv (tiled)",
          dq_kernel<D>,      sizeof(float) * (4 * G::tile + G::scores + 2 * kTile), "llama attention dq (tiled)"};
}

// Forward and dq: a block per (query tile, sequence and head); dk, dv: per (key tile, sequence and head).
inline dim3 grid_of(const rows::FusedAttention<float>& f, Index batch) {
  return {unsigned((f.seq + kTile - 1) / kTile), unsigned(batch * f.heads)};
}

inline void run_forward(const Schedule& k, const rows::FusedAttention<float>& f, Index batch,
                        milora::cuda::DeviceView<float> out, float* lse, cudaStream_t s) {
  launch(k.forward, grid_of(f, batch), k.forward_shared, s, k.forward_name, f, out.data(), out.ld(), lse);
}

inline void run_backward(const Schedule& k, const rows::FusedAttention<float>& f, Index batch, const float* dout,
                         Index ld_do, const float* lse, const float* delta, milora::cuda::DeviceView<float> dq,
                         milora::cuda::DeviceView<float> dk, milora::cuda::DeviceView<float> dv, cudaStream_t s) {
  per_head_dkv(f, batch, dk, dv, s, [&](bool per_head, float* gk, Index ld_k, float* gv, Index ld_v) {
    launch(k.dkv, grid_of(f, batch), k.dkv_shared, s, k.dkv_name, f, dout, ld_do, lse, delta, per_head, gk, ld_k, gv, ld_v);
  });
  launch(k.dq, grid_of(f, batch), k.dq_shared, s, k.dq_name, f, dout, ld_do, lse, delta, dq.data(), dq.ld());
}

/// Runs `body.template operator()<D>()` for head_dim D (one of supports()).
template <class Body>
void with_head_dim(Index head_dim, Body&& body) {
  switch (head_dim) {
    case 16: body.template operator()<16>(); break;
    case 32: body.template operator()<32>(); break;
    case 64: body.template operator()<64>(); break;
    default: body.template operator()<128>(); break;
  }
}

}  // namespace llama::cuda_launch::tiled
