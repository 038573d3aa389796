// The LLaMA's causal attention on a GPU in shared-memory tiles (flash-attention's schedule), for
// float and head_dim 16, 32, 64 or 128: written once here, over a product policy that says how a
// tile's matrix products are computed:
//   CudaCores    (attention_cuda_cores.cuh)    FMAs, each thread a 4 x (D / 16) piece in registers
//   TensorCores  (attention_tensor_cores.cuh)  WMMA fragments in TF32, chosen when the thread's
//                                              CUDA context allows TF32 (--tf32)
// kernels_cuda.cuh uses these for float and those head sizes, and the one-thread-per-row
// FusedAttention (kernels_rows.hpp) otherwise.
//
// Why tiles: the row kernel gives each query row one thread that walks every key and adds into its
// output row in global memory, so the key rows are read once per query row and a thread makes
// ~seq^2 / 10 scattered read-modify-writes (docs/benchmarks.md has the GPU numbers). Here a block
// of 256 threads owns 64 query rows (or, for dk and dv, 64 key rows); key, value, query and
// output-gradient tiles of 64 rows are staged in shared memory once per block, and the 64 x 64
// scores of a tile pair live in shared memory between the two products that use them.
//
// The math is FusedAttention's (kernels_rows.hpp): the forward keeps a running maximum and sum per
// row (online softmax) and writes each row's logsumexp; the backward recomputes P from q, k and
// the logsumexp, with D = rowsum(dO * O) from the row kernel:
//   dk, dv: one block per (sequence, head, key tile), over the query tiles at or after the key
//           tile; with grouped heads each query head's share goes to a buffer and group_sum adds
//           the group's shares in head order (one block per kv head would leave the first key
//           tile's block a group of heads times all query tiles of serial work);
//   dq:     one block per (sequence, head, query tile), over the key tiles at or before it.
// Every output element has one writer (no atomics), so a run repeats bit for bit. Products and
// sums are float (the row kernel's are double); tests/cuda/test_llama_parity.cpp holds both
// policies to the double computation of the rows.
//
// A product policy P provides, for head_dim D:
//   template <int D> struct Layout   ld (a staged 64 x D tile's row stride), tile (its floats),
//                                    sld (a 64 x 64 score tile's row stride), scores (its floats)
//   template <int D> struct Acc      a block's 64 x D accumulator, as this policy holds it
//   clear<D>(acc), accumulate<D>(acc, p, y): acc += p (64 x 64 scores) . y (64 x D staged)
//   write<D>(acc, k, m, ld, row0, rows, col0, scratch): rows [row0, row0 + 64) below `rows` of
//                                    acc * k into columns col0.. of m (scratch: a free staged tile)
//   scores<D>(x, y, ps, q0, k0, seq, scale)   ps = the masked, scaled x . y^T of a forward tile,
//                                    or the raw products (then mask_row finishes each row)
//   mask_row<D>(pr, i, k0, seq, scale, part)  the quad's share of row i of ps, before the softmax
//   add_pv<D>(o, rescale, ps, vs, pv)        o = o * rescale + P . V, o this thread's registers
//   probabilities<keys_are_rows, D>(x, y, u, z, lse, delta, q0, k0, seq, scale, ps, dss):
//                                    P = exp(scale x . y^T - L) into ps (if not null) and
//                                    dS = P (u . z^T - D) into dss for a tile pair
//   forward_pv_tile (a 64 x D scratch for add_pv), dq_score_tiles (1: dq needs dS alone), and a
//   label for the kernels' names in MILORA_CUDA_PROFILE's table
#pragma once

#if !defined(__CUDACC__)
#error "attention_tiled.cuh needs nvcc"
#endif

#include <algorithm>
#include <cmath>
#include <string>

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

/// A 64 x D staged tile whose rows are D + pad floats apart, and a 64 x 64 score tile with rows
/// 64 + score_pad apart: padding spreads a column walk over the shared memory banks.
template <int D, int pad, int score_pad>
struct TileLayout {
  static constexpr int ld = D + pad;
  static constexpr int tile = kTile * ld;
  static constexpr int sld = kTile + score_pad;
  static constexpr int scores = kTile * sld;
};

/// The head sizes with a tiled kernel.
inline bool supports(Index head_dim) { return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 128; }

/// Rows [row0, row0 + 64) of the D columns from col0 of a row-major matrix into s (row stride
/// kStagedLd); rows at or past `rows` read as zero.
template <int D, int kStagedLd>
__device__ void stage(const float* m, Index ld, Index row0, Index rows, Index col0, float* s) {
  for (int e = int(threadIdx.x); e < kTile * D; e += kThreads) {
    const int r = e / D, c = e % D;
    s[r * kStagedLd + c] = row0 + r < rows ? m[(row0 + r) * ld + col0 + c] : 0.f;
  }
}

/// Writes acc * k into rows row0 + ty + 16a (those below `rows`), columns col0 + tx + 16c: a 64 x D
/// result held in registers the way the thread grid holds it.
template <int D>
__device__ void write_rows(const float (&acc)[kPer][D / kGrid], float k, float* m, Index ld, Index row0, Index rows,
                           Index col0) {
  const int tx = int(threadIdx.x) % kGrid, ty = int(threadIdx.x) / kGrid;
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
    const Index r = row0 + ty + kGrid * a;
    if (r >= rows) continue;
#pragma unroll
    for (int c = 0; c < D / kGrid; ++c) m[r * ld + col0 + tx + kGrid * c] = acc[a][c] * k;
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

/// The query tile's L and D into shared memory (0 past the sequence's end).
__device__ inline void stage_row_stats(const float* lse, const float* delta, Index first, Index q0, Index seq, float* lse_s,
                                       float* delta_s) {
  if (threadIdx.x < kTile) {
    const bool in = q0 + Index(threadIdx.x) < seq;
    lse_s[threadIdx.x] = in ? lse[first + q0 + Index(threadIdx.x)] : 0.f;
    delta_s[threadIdx.x] = in ? delta[first + q0 + Index(threadIdx.x)] : 0.f;
  }
}

// ---- the three kernels, written once over the product policy P --------------------------------------

// Grid: (query tiles, batch * heads). Shared: q, k, v tiles (and P's P . V scratch), the scores,
// and per row the factor that rescales its output and its final maximum and sum.
template <class P, int D>
__global__ void __launch_bounds__(kThreads) forward_kernel(rows::FusedAttention<float> f, float* out, Index ld_out,
                                                           float* lse) {
  using L = typename P::template Layout<D>;
  extern __shared__ __align__(128) float smem[];
  float* qs = smem;
  float* ks = qs + L::tile;
  float* vs = ks + L::tile;
  float* pv = vs + L::tile;  // P's scratch for P . V (none: pv == ps)
  float* ps = pv + (P::forward_pv_tile ? L::tile : 0);
  float* rescale = ps + L::scores;
  float* row_max = rescale + kTile;
  float* row_sum = row_max + kTile;
  const Index qt = blockIdx.x, b = Index(blockIdx.y) / f.heads, h = Index(blockIdx.y) % f.heads;
  const Index base = b * f.seq, q0 = qt * kTile, qc = h * D, kc = h / f.group() * D;
  const float scale = float(f.scale);
  stage<D, L::ld>(f.q.row(base), f.q.ld, q0, f.seq, qc, qs);

  float o[kPer][D / kGrid] = {};
  // the softmax step gives row threadIdx.x / 4 to four consecutive lanes; each keeps its own copy
  const int srow = int(threadIdx.x) / 4, spart = int(threadIdx.x) % 4;
  float m = -INFINITY, l = 0;
  for (Index kt = 0; kt <= qt; ++kt) {
    const Index k0 = kt * kTile;
    __syncthreads();  // the previous tile's k, v and scores are no longer read
    stage<D, L::ld>(f.k.row(base), f.k.ld, k0, f.seq, kc, ks);
    stage<D, L::ld>(f.v.row(base), f.v.ld, k0, f.seq, kc, vs);
    __syncthreads();
    P::template scores<D>(qs, ks, ps, q0, k0, f.seq, scale);
    __syncthreads();
    float* pr = ps + srow * L::sld;
    P::template mask_row<D>(pr, q0 + srow, k0, f.seq, scale, spart);
    const float alpha = online_softmax_step(pr, m, l);
    if (spart == 0) rescale[srow] = alpha;
    __syncthreads();
    P::template add_pv<D>(o, rescale, ps, vs, pv);
  }
  // the end: each row's output divided by its sum, written below the sequence's end; L = m + log l
  const int ty = int(threadIdx.x) / kGrid;
  if (spart == 0) {
    row_max[srow] = m;
    row_sum[srow] = l;
  }
  __syncthreads();
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
    const float inv = 1.f / row_sum[ty + kGrid * a];
#pragma unroll
    for (int c = 0; c < D / kGrid; ++c) o[a][c] *= inv;
  }
  write_rows<D>(o, 1.f, out + b * f.seq * ld_out, ld_out, q0, f.seq, h * D);
  if (threadIdx.x < kTile && q0 + Index(threadIdx.x) < f.seq)
    lse[(b * f.heads + h) * f.seq + q0 + Index(threadIdx.x)] = row_max[threadIdx.x] + logf(row_sum[threadIdx.x]);
}

// Grid: (key tiles, batch * heads): one query head's share of its kv head's dk and dv, written at
// column h * D of per-head buffers (or at g * D of dk, dv themselves when every kv head has one
// query head); group_sum adds the shares. Shared: k, v, q, dO tiles, P and dS, the query tile's L
// and D.
template <class P, int D>
__global__ void __launch_bounds__(kThreads) dkv_kernel(rows::FusedAttention<float> f, const float* dout, Index ld_do,
                                                       const float* lse, const float* delta, bool per_head, float* dk,
                                                       Index ld_dk, float* dv, Index ld_dv) {
  using L = typename P::template Layout<D>;
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
  typename P::template Acc<D> gk, gv;
  P::template clear<D>(gk);
  P::template clear<D>(gv);
  for (Index qt = kt; qt < tiles; ++qt) {
    const Index q0 = qt * kTile;
    __syncthreads();
    stage<D, L::ld>(f.q.row(base), f.q.ld, q0, f.seq, qc, qs);
    stage<D, L::ld>(dout + base * ld_do, ld_do, q0, f.seq, qc, dos);
    stage_row_stats(lse, delta, (b * f.heads + h) * f.seq, q0, f.seq, lse_s, delta_s);
    __syncthreads();
    P::template probabilities<true, D>(ks, qs, vs, dos, lse_s, delta_s, q0, k0, f.seq, scale, ps, dss);
    __syncthreads();
    P::template accumulate<D>(gv, ps, dos);
    P::template accumulate<D>(gk, dss, qs);
  }
  const Index oc = per_head ? qc : kc;
  P::template write<D>(gk, scale, dk + base * ld_dk, ld_dk, k0, f.seq, oc, qs);
  P::template write<D>(gv, 1.f, dv + base * ld_dv, ld_dv, k0, f.seq, oc, dos);
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

// Grid: (query tiles, batch * heads). Shared: q, dO, k, v tiles, (P if the policy keeps it,) dS,
// the query tile's L and D.
template <class P, int D>
__global__ void __launch_bounds__(kThreads) dq_kernel(rows::FusedAttention<float> f, const float* dout, Index ld_do,
                                                      const float* lse, const float* delta, float* dq, Index ld_dq) {
  using L = typename P::template Layout<D>;
  extern __shared__ __align__(128) float smem[];
  float* qs = smem;
  float* dos = qs + L::tile;
  float* ks = dos + L::tile;
  float* vs = ks + L::tile;
  float* ps = P::dq_score_tiles == 2 ? vs + L::tile : nullptr;
  float* dss = vs + L::tile + (P::dq_score_tiles - 1) * L::scores;
  float* lse_s = dss + L::scores;
  float* delta_s = lse_s + kTile;
  const Index qt = blockIdx.x, b = Index(blockIdx.y) / f.heads, h = Index(blockIdx.y) % f.heads;
  const Index base = b * f.seq, q0 = qt * kTile, qc = h * D, kc = h / f.group() * D;
  const float scale = float(f.scale);
  stage<D, L::ld>(f.q.row(base), f.q.ld, q0, f.seq, qc, qs);
  stage<D, L::ld>(dout + base * ld_do, ld_do, q0, f.seq, qc, dos);
  stage_row_stats(lse, delta, (b * f.heads + h) * f.seq, q0, f.seq, lse_s, delta_s);
  typename P::template Acc<D> gq;
  P::template clear<D>(gq);
  for (Index kt = 0; kt <= qt; ++kt) {
    const Index k0 = kt * kTile;
    __syncthreads();
    stage<D, L::ld>(f.k.row(base), f.k.ld, k0, f.seq, kc, ks);
    stage<D, L::ld>(f.v.row(base), f.v.ld, k0, f.seq, kc, vs);
    __syncthreads();
    P::template probabilities<false, D>(qs, ks, dos, vs, lse_s, delta_s, q0, k0, f.seq, scale, ps, dss);
    __syncthreads();
    P::template accumulate<D>(gq, dss, ks);
  }
  P::template write<D>(gq, scale, dq + base * ld_dq, ld_dq, q0, f.seq, qc, ks);
}

// ---- launching ---------------------------------------------------------------------------------

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

/// One policy's three kernels for head_dim D and their dynamic shared memory in bytes.
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

template <class P, int D>
Schedule schedule() {
  using L = typename P::template Layout<D>;
  constexpr int forward_tiles = P::forward_pv_tile ? 4 : 3;
  // the profile's names, one string per policy for the life of the program
  static const std::string forward = std::string("llama attention forward (") + P::label + ")",
                           dkv = std::string("llama attention dk dv (") + P::label + ")",
                           dq = std::string("llama attention dq (") + P::label + ")";
  return {forward_kernel<P, D>, sizeof(float) * (forward_tiles * L::tile + L::scores + 3 * kTile), forward.c_str(),
          dkv_kernel<P, D>,     sizeof(float) * (4 * L::tile + 2 * L::scores + 2 * kTile),           dkv.c_str(),
          dq_kernel<P, D>,      sizeof(float) * (4 * L::tile + P::dq_score_tiles * L::scores + 2 * kTile), dq.c_str()};
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
