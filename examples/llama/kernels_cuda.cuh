// Definitions of the LLaMA's CUDA kernels (declared in kernels_cuda_launch.hpp), for nvcc only: compile
// kernels_cuda.cu once into a program that runs the model on CudaBackend.
//
// Element-wise kernels are a grid-stride loop that hands one element to the shared math of
// kernels_rows.hpp. The row reductions (RMSNorm, cross-entropy) give a row to a warp: its 32 lanes
// read the row's consecutive elements together and reduce with shuffles, where one thread per row
// read a 32000-wide row of logits alone. The attention runs in shared-memory tiles for float and
// head_dim 16 / 32 / 64 / 128 (attention_tiled.cuh), FusedAttention's one thread per row otherwise.
// MILORA_CUDA_PROFILE=1 times every launch by name (kernel_profile.hpp).
#pragma once

#if !defined(__CUDACC__)
#error "kernels_cuda.cuh needs nvcc: compile kernels_cuda.cu, include kernels_cuda.hpp elsewhere"
#endif

#include <algorithm>
#include <type_traits>

#include "attention_cuda_cores.cuh"
#include "attention_tensor_cores.cuh"
#include "attention_tiled.cuh"
#include "kernel_profile.hpp"
#include "kernels_cuda_launch.hpp"
#include "kernels_rows.hpp"

namespace llama::cuda_launch {
namespace device {

constexpr int threads = 256;

inline int blocks_for(Index n) {
  return static_cast<int>(std::clamp<Index>((n + threads - 1) / threads, 1, 8192));  // grid-stride beyond that
}

template <class F>
__global__ void each_index(Index n, F f) {
  for (Index k = Index(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += Index(blockDim.x) * gridDim.x) f(k);
}

template <class F>
void launch(Index n, F f, cudaStream_t s, const char* name) {
  if (n <= 0) return;
  const profile::Scope timer(name, s);
  each_index<<<blocks_for(n), threads, 0, s>>>(n, f);
  milora::cuda::check_launch(name);
}

constexpr int kLanes = 32;
constexpr unsigned kAllLanes = 0xffffffffu;

// f(row, lane) for every row, a warp per row: every lane of a warp sees the same row, so f may
// reduce across the warp with shuffles.
template <class F>
__global__ void each_row(Index rows, F f) {
  const Index warps = Index(gridDim.x) * (blockDim.x / kLanes);
  for (Index r = (Index(blockIdx.x) * blockDim.x + threadIdx.x) / kLanes; r < rows; r += warps) f(r, int(threadIdx.x % kLanes));
}

template <class F>
void launch_rows(Index rows, F f, cudaStream_t s, const char* name) {
  if (rows <= 0) return;
  const profile::Scope timer(name, s);
  each_row<<<blocks_for(rows * kLanes), threads, 0, s>>>(rows, f);
  milora::cuda::check_launch(name);
}

// rows::OneLane's counterpart: the 32 lanes of a warp share a row and combine with shuffles.
struct WarpLanes {
  Index lane;
  static constexpr Index lanes = kLanes;
  __device__ double sum(double v) const {
    for (int o = kLanes / 2; o > 0; o /= 2) v += __shfl_xor_sync(kAllLanes, v, o);
    return v;
  }
  template <class T>
  __device__ T max(T v) const {
    for (int o = kLanes / 2; o > 0; o /= 2) {
      const T w = __shfl_xor_sync(kAllLanes, v, o);
      v = w > v ? w : v;
    }
    return v;
  }
  __device__ void sync() const { __syncwarp(); }
};

template <class T>
__device__ T* row(DeviceView<T> m, Index i) { return m.data() + i * m.ld(); }

}  // namespace device

template <class T>
void embed(DeviceView<const T> table, const Token* tokens, DeviceView<T> out, cudaStream_t s) {
  const Index c = out.cols();
  device::launch(out.rows() * c, [=] __device__(Index k) {
    const Index i = k / c, j = k % c;
    device::row(out, i)[j] = device::row(table, Index(tokens[i]))[j];
  }, s, "llama embed");
}

template <class T>
void embed_backward(DeviceView<const T> dout, const Token* tokens, DeviceView<T> dtable, cudaStream_t s) {
  const Index c = dout.cols();
  device::launch(dout.rows() * c, [=] __device__(Index k) {  // a token may repeat: atomic
    const Index i = k / c, j = k % c;
    atomicAdd(device::row(dtable, Index(tokens[i])) + j, device::row(dout, i)[j]);
  }, s, "llama embed_backward");
}

template <class T>
void rmsnorm_forward(DeviceView<const T> x, const T* w, double eps, DeviceView<T> y, T* rstd, cudaStream_t s) {
  const Index c = x.cols();
  device::launch_rows(x.rows(), [=] __device__(Index i, int lane) {
    const T r = rows::rmsnorm_forward(device::row(x, i), w, c, eps, device::row(y, i), device::WarpLanes{lane});
    if (lane == 0) rstd[i] = r;
  }, s, "llama rmsnorm_forward");
}

template <class T>
void rmsnorm_backward(DeviceView<const T> dy, DeviceView<const T> x, const T* w, const T* rstd, DeviceView<T> dx,
                      cudaStream_t s) {
  const Index c = x.cols();
  device::launch_rows(x.rows(), [=] __device__(Index i, int lane) {
    rows::rmsnorm_backward(device::row(dy, i), device::row(x, i), w, double(rstd[i]), c, device::row(dx, i),
                           device::WarpLanes{lane});
  }, s, "llama rmsnorm_backward");
}

template <class T>
void rmsnorm_backward_weight(DeviceView<const T> dy, DeviceView<const T> x, const T* rstd, T* dw, cudaStream_t s) {
  const Index n = x.rows();
  device::launch(x.cols(), [=] __device__(Index j) {  // one thread per feature: a fixed order, no atomics
    double acc = 0;
    for (Index i = 0; i < n; ++i) acc += double(device::row(dy, i)[j]) * double(device::row(x, i)[j]) * double(rstd[i]);
    dw[j] += T(acc);
  }, s, "llama rmsnorm_backward_weight");
}

template <class T>
void rope(DeviceView<T> x, DeviceView<const T> cos, DeviceView<const T> sin, Index seq, Index head_dim, double sign,
          cudaStream_t s) {
  const Index heads = x.cols() / head_dim, half = head_dim / 2;
  // one thread per rotated pair, so a warp's lanes touch consecutive columns (a thread per
  // (row, head) would walk a head alone, a warp's accesses head_dim apart)
  device::launch(x.rows() * heads * half, [=] __device__(Index k) {
    const Index i = k % half, r = k / (heads * half), h = (k / half) % heads, t = r % seq;
    rows::rope_pair(device::row(x, r) + h * head_dim, device::row(cos, t)[i], device::row(sin, t)[i], i, half, sign);
  }, s, "llama rope");
}

template <class T>
void rope_positions(DeviceView<T> x, DeviceView<const T> cos, DeviceView<const T> sin, Index head_dim, const std::int32_t* positions,
                    cudaStream_t s) {
  const Index heads = x.cols() / head_dim, half = head_dim / 2;
  device::launch(x.rows() * heads * half, [=] __device__(Index k) {
    const Index i = k % half, r = k / (heads * half), h = (k / half) % heads, t = positions[r];
    rows::rope_pair(device::row(x, r) + h * head_dim, device::row(cos, t)[i], device::row(sin, t)[i], i, half, 1.0);
  }, s, "llama rope_positions");
}

template <class T>
rows::RowPtr<T> rows_of(DeviceView<T> m) { return {m.data(), m.ld()}; }

// A warp per query row: at one new token per sequence (decoding) there are only batch * heads rows,
// so the lanes share each row's dot products rather than a thread walking a row alone.
template <class T>
void attention_cached(const rows::CachedAttention<T>& a, Index batch, const std::int32_t* start, DeviceView<T> out, cudaStream_t s) {
  const rows::CachedAttention<T> f = a;  // by value into the kernel
  const auto o = rows_of(out);
  device::launch_rows(batch * a.heads * a.seq, [=] __device__(Index r, int lane) {
    f.forward(r, Index(start[f.sequence_of(r)]), o, device::WarpLanes{lane});
  }, s, "llama attention_cached");
}

// Float with head_dim 16 / 32 / 64 / 128: the tiled kernels of attention_tiled.cuh, their products on
// CUDA cores, or on tensor cores in TF32 when the context allows TF32. Otherwise one
// thread per query row (double, which the parity test uses to check FusedAttention's math on the
// GPU to 1e-10; other head sizes): the threads of a warp are consecutive positions of one
// (sequence, head), so they read the same key and value rows at about the same time.
template <class T>
void attention_forward(const rows::FusedAttention<T>& a, Index batch, DeviceView<T> out, T* lse, cudaStream_t s) {
  if constexpr (std::is_same_v<T, float>) {
    if (tiled::supports(a.head_dim)) {
      tiled::with_head_dim(a.head_dim, [&]<int D>() {
        const bool tensor_cores = milora::cuda::context().tf32();  // --tf32
        tiled::run_forward(tensor_cores ? tiled::schedule<tiled::TensorCores, D>() : tiled::schedule<tiled::CudaCores, D>(), a,
                           batch, out, lse, s);
      });
      return;
    }
  }
  const rows::FusedAttention<T> f = a;  // by value into the kernel
  const auto o = rows_of(out);
  device::launch(batch * a.heads * a.seq, [=] __device__(Index r) { lse[r] = f.forward(r, o); }, s,
                 "llama attention_forward (fused)");
}

template <class T>
void attention_backward(const rows::FusedAttention<T>& a, Index batch, DeviceView<const T> dout, DeviceView<const T> out,
                        const T* lse, T* delta, DeviceView<T> dq, DeviceView<T> dk, DeviceView<T> dv, cudaStream_t s) {
  const rows::FusedAttention<T> f = a;
  const auto go = rows_of(dout), o = rows_of(out);
  const auto gq = rows_of(dq), gk = rows_of(dk), gv = rows_of(dv);
  const Index query_rows = batch * a.heads * a.seq, key_rows = batch * a.kv_heads * a.seq;
  device::launch(query_rows, [=] __device__(Index r) { delta[r] = f.delta(r, go, o); }, s, "llama attention delta");
  if constexpr (std::is_same_v<T, float>) {
    if (tiled::supports(a.head_dim)) {
      tiled::with_head_dim(a.head_dim, [&]<int D>() {
        const bool tensor_cores = milora::cuda::context().tf32();
        tiled::run_backward(tensor_cores ? tiled::schedule<tiled::TensorCores, D>() : tiled::schedule<tiled::CudaCores, D>(), a,
                            batch, dout.data(), dout.ld(), lse, delta, dq, dk, dv, s);
      });
      return;
    }
  }
  device::launch(query_rows, [=] __device__(Index r) { f.dq(r, go, lse, delta, gq); }, s, "llama attention dq (fused)");
  device::launch(key_rows, [=] __device__(Index r) { f.dkv(r, go, lse, delta, gk, gv); }, s,
                 "llama attention dk dv (fused)");
}

template <class T>
void swiglu_forward(DeviceView<const T> gate, DeviceView<const T> up, DeviceView<T> out, cudaStream_t s) {
  const Index c = gate.cols();
  device::launch(gate.rows() * c, [=] __device__(Index k) {
    const Index i = k / c, j = k % c;
    device::row(out, i)[j] = rows::swiglu_forward(device::row(gate, i)[j], device::row(up, i)[j]);
  }, s, "llama swiglu_forward");
}

template <class T>
void swiglu_backward(DeviceView<const T> dout, DeviceView<const T> gate, DeviceView<const T> up, DeviceView<T> dgate,
                     DeviceView<T> dup, cudaStream_t s) {
  const Index c = gate.cols();
  device::launch(gate.rows() * c, [=] __device__(Index k) {
    const Index i = k / c, j = k % c;
    rows::swiglu_backward(device::row(dout, i)[j], device::row(gate, i)[j], device::row(up, i)[j], device::row(dgate, i) + j,
                          device::row(dup, i) + j);
  }, s, "llama swiglu_backward");
}

template <class T>
void cross_entropy(DeviceView<const T> logits, const Token* targets, double k, DeviceView<T> dlogits, double* row_loss,
                   cudaStream_t s) {
  const Index vocab = logits.cols();
  const bool grad = dlogits.data() != nullptr;
  device::launch_rows(logits.rows(), [=] __device__(Index i, int lane) {
    const Token t = targets[i];
    const T* z = device::row(logits, i);
    T* d = grad ? device::row(dlogits, i) : nullptr;
    if (t == kIgnoreIndex) {
      if (lane == 0) row_loss[i] = 0;
      if (d != nullptr)
        for (Index j = lane; j < vocab; j += device::kLanes) d[j] = T(0);
      return;
    }
    const double loss = rows::cross_entropy(z, vocab, t, k, d, device::WarpLanes{lane});
    if (lane == 0) row_loss[i] = loss;
  }, s, "llama cross_entropy");
}

#define LLAMA_CUDA_INSTANTIATE(T)                                                                                        \
  template void embed<T>(DeviceView<const T>, const Token*, DeviceView<T>, cudaStream_t);                                \
  template void embed_backward<T>(DeviceView<const T>, const Token*, DeviceView<T>, cudaStream_t);                       \
  template void rmsnorm_forward<T>(DeviceView<const T>, const T*, double, DeviceView<T>, T*, cudaStream_t);             \
  template void rmsnorm_backward<T>(DeviceView<const T>, DeviceView<const T>, const T*, const T*, DeviceView<T>,         \
                                    cudaStream_t);                                                                       \
  template void rmsnorm_backward_weight<T>(DeviceView<const T>, DeviceView<const T>, const T*, T*, cudaStream_t);       \
  template void rope<T>(DeviceView<T>, DeviceView<const T>, DeviceView<const T>, Index, Index, double, cudaStream_t);    \
  template void rope_positions<T>(DeviceView<T>, DeviceView<const T>, DeviceView<const T>, Index, const std::int32_t*,          \
                                  cudaStream_t);                                                                        \
  template void attention_cached<T>(const rows::CachedAttention<T>&, Index, const std::int32_t*, DeviceView<T>, cudaStream_t); \
  template void attention_forward<T>(const rows::FusedAttention<T>&, Index, DeviceView<T>, T*, cudaStream_t);            \
  template void attention_backward<T>(const rows::FusedAttention<T>&, Index, DeviceView<const T>, DeviceView<const T>,   \
                                      const T*, T*, DeviceView<T>, DeviceView<T>, DeviceView<T>, cudaStream_t);          \
  template void swiglu_forward<T>(DeviceView<const T>, DeviceView<const T>, DeviceView<T>, cudaStream_t);                \
  template void swiglu_backward<T>(DeviceView<const T>, DeviceView<const T>, DeviceView<const T>, DeviceView<T>,        \
                                   DeviceView<T>, cudaStream_t);                                                         \
  template void cross_entropy<T>(DeviceView<const T>, const Token*, double, DeviceView<T>, double*, cudaStream_t);

LLAMA_CUDA_INSTANTIATE(float)
LLAMA_CUDA_INSTANTIATE(double)
#undef LLAMA_CUDA_INSTANTIATE

}  // namespace llama::cuda_launch
