// Definitions of CudaBackend's element-wise kernels (declared in kernels.hpp), for nvcc only.
//
// One grid-stride kernel, each_element, walks the rows x cols index space of a (possibly strided)
// view and calls a small functor per element; the functors below are the operations. The index
// space is flattened so one launch shape serves every matrix shape, and element (i, j) is
// recovered as (k / cols, k % cols), which is also the draw number the random fills need.
#pragma once

#if !defined(__CUDACC__)
#error "milora/backend/cuda/kernels.cuh needs nvcc: compile milora/backend/cuda/kernels.cu, include kernels.hpp elsewhere"
#endif

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "milora/backend/cuda/kernels.hpp"
#include "milora/core/random.hpp"

namespace milora::cuda::kernels {
namespace device {

constexpr int threads = 256;

inline int blocks_for(Index n) {
  const Index b = (n + threads - 1) / threads;
  return static_cast<int>(std::clamp<Index>(b, 1, 8192));  // grid-stride beyond that
}

template <class F>
__global__ void each_element(Index rows, Index cols, F f) {
  const Index n = rows * cols;
  for (Index k = Index(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += Index(blockDim.x) * gridDim.x)
    f(k / cols, k % cols);
}

template <class F>
void launch(Index rows, Index cols, F f, cudaStream_t stream, const char* name) {
  if (rows <= 0 || cols <= 0) return;
  each_element<<<blocks_for(rows * cols), threads, 0, stream>>>(rows, cols, f);
  check_launch(name);
}

template <class T>
__device__ T& at(DeviceView<T> m, Index i, Index j) { return m.data()[i * m.ld() + j]; }

template <class T> struct Scale {
  DeviceView<T> m; T a;
  __device__ void operator()(Index i, Index j) const {
    T& x = at(m, i, j);
    x = a == T(0) ? T(0) : x * a;
  }
};
template <class T> struct Axpy {
  T a; DeviceView<const T> x; DeviceView<T> y;
  __device__ void operator()(Index i, Index j) const { at(y, i, j) += a * at(x, i, j); }
};
template <class T> struct AddDiagonal {
  DeviceView<T> m; T a;
  __device__ void operator()(Index i, Index) const { at(m, i, i) += a; }
};
template <class T> struct AddRow {
  DeviceView<T> m; const T* row; Index stride;
  __device__ void operator()(Index i, Index j) const { at(m, i, j) += row[j * stride]; }
};
template <class T> struct ScaleRows {
  DeviceView<T> m; const T* d; Index stride;
  __device__ void operator()(Index i, Index j) const { at(m, i, j) *= d[i * stride]; }
};
template <class T> struct ScaleColumns {
  DeviceView<T> m; const T* d; Index stride;
  __device__ void operator()(Index i, Index j) const { at(m, i, j) *= d[j * stride]; }
};
template <class T> struct FindNonfinite {
  DeviceView<const T> m; int* flag;
  __device__ void operator()(Index i, Index j) const {
    if (!isfinite(at(m, i, j))) *flag = 1;  // every writer writes 1: the race is benign
  }
};
template <class T> struct AdamW {
  DeviceView<T> p; DeviceView<const T> g; DeviceView<T> m, v;
  T decay, one_minus_b1, b2, one_minus_b2, step_size, bc2, eps;
  __device__ void operator()(Index i, Index j) const {
    const T gij = at(g, i, j);
    T& pij = at(p, i, j);
    T& mij = at(m, i, j);
    T& vij = at(v, i, j);
    pij *= decay;
    mij += (gij - mij) * one_minus_b1;  // torch: exp_avg.lerp_(grad, 1 - beta1)
    vij = vij * b2 + one_minus_b2 * gij * gij;
    pij -= step_size * mij / (sqrt(vij) / bc2 + eps);
  }
};
template <class T> struct FillUniform {
  DeviceView<T> m; double lo, hi; std::uint64_t seed;
  __device__ void operator()(Index i, Index j) const {
    at(m, i, j) = T(random::uniform(seed, std::uint64_t(i * m.cols() + j), lo, hi));
  }
};
template <class T> struct FillNormal {
  DeviceView<T> m; double mean, stddev; std::uint64_t seed;
  __device__ void operator()(Index i, Index j) const {
    at(m, i, j) = T(mean + stddev * random::normal(seed, std::uint64_t(i * m.cols() + j)));
  }
};
template <class From, class To> struct Convert {
  DeviceView<const From> src; DeviceView<To> dst;
  __device__ void operator()(Index i, Index j) const { at(dst, i, j) = static_cast<To>(at(src, i, j)); }
};
template <class T> struct RoundToBf16 {
  DeviceView<const T> src; DeviceView<bf16> dst;
  __device__ void operator()(Index i, Index j) const {
    at(dst, i, j).bits = __bfloat16_as_ushort(__float2bfloat16_rn(static_cast<float>(at(src, i, j))));
  }
};
template <class T> struct WidenBf16 {
  DeviceView<const bf16> src; DeviceView<T> dst;
  __device__ void operator()(Index i, Index j) const {
    at(dst, i, j) = static_cast<T>(__bfloat162float(__ushort_as_bfloat16(at(src, i, j).bits)));
  }
};
template <class T> struct MirrorUpperToLower {
  DeviceView<T> m;
  __device__ void operator()(Index i, Index j) const {
    if (j < i) at(m, i, j) = at(m, j, i);
  }
};
template <class T> struct ZeroStrictTriangle {
  DeviceView<T> m; bool upper;
  __device__ void operator()(Index i, Index j) const {
    if (upper ? j > i : j < i) at(m, i, j) = T(0);
  }
};

template <class T>
__global__ void squared_norm_blocks_kernel(DeviceView<const T> m, double* partials) {
  __shared__ double sums[threads];
  const Index n = m.rows() * m.cols();
  double s = 0;
  for (Index k = Index(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += Index(blockDim.x) * gridDim.x) {
    const double x = static_cast<double>(at(m, k / m.cols(), k % m.cols()));
    s += x * x;
  }
  sums[threadIdx.x] = s;
  __syncthreads();
  for (int half = threads / 2; half > 0; half /= 2) {  // a fixed tree: the same order every run
    if (int(threadIdx.x) < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = sums[0];
}

}  // namespace device

template <class T> void scale(DeviceView<T> m, T a, cudaStream_t s) {
  device::launch(m.rows(), m.cols(), device::Scale<T>{m, a}, s, "milora::cuda::kernels::scale");
}
template <class T> void axpy(T a, DeviceView<const T> x, DeviceView<T> y, cudaStream_t s) {
  device::launch(y.rows(), y.cols(), device::Axpy<T>{a, x, y}, s, "milora::cuda::kernels::axpy");
}
template <class T> void add_diagonal(DeviceView<T> m, T a, cudaStream_t s) {
  device::launch(std::min(m.rows(), m.cols()), Index(1), device::AddDiagonal<T>{m, a}, s,
                 "milora::cuda::kernels::add_diagonal");
}
template <class T> void add_row_broadcast(DeviceView<T> m, const T* row, Index stride, cudaStream_t s) {
  device::launch(m.rows(), m.cols(), device::AddRow<T>{m, row, stride}, s, "milora::cuda::kernels::add_row_broadcast");
}
template <class T> void scale_rows(DeviceView<T> m, const T* d, Index stride, cudaStream_t s) {
  device::launch(m.rows(), m.cols(), device::ScaleRows<T>{m, d, stride}, s, "milora::cuda::kernels::scale_rows");
}
template <class T> void scale_columns(DeviceView<T> m, const T* d, Index stride, cudaStream_t s) {
  device::launch(m.rows(), m.cols(), device::ScaleColumns<T>{m, d, stride}, s, "milora::cuda::kernels::scale_columns");
}
template <class T> void find_nonfinite(DeviceView<const T> m, int* flag, cudaStream_t s) {
  device::launch(m.rows(), m.cols(), device::FindNonfinite<T>{m, flag}, s, "milora::cuda::kernels::find_nonfinite");
}
template <class T> void squared_norm_partials(DeviceView<const T> m, double* partials, cudaStream_t s) {
  device::squared_norm_blocks_kernel<T><<<squared_norm_blocks, device::threads, 0, s>>>(m, partials);
  check_launch("milora::cuda::kernels::squared_norm_partials");
}
template <class T>
void adamw(DeviceView<T> p, DeviceView<const T> g, DeviceView<T> m, DeviceView<T> v, AdamWStep st, cudaStream_t s) {
  const device::AdamW<T> f{p, g, m, v, T(1 - st.lr * st.weight_decay), T(1) - T(st.beta1), T(st.beta2),
                           T(1) - T(st.beta2), T(st.lr / st.bias_correction1), T(st.bias_correction2_sqrt),
                           T(st.eps)};
  device::launch(p.rows(), p.cols(), f, s, "milora::cuda::kernels::adamw");
}
template <class T> void fill_uniform(DeviceView<T> m, double lo, double hi, std::uint64_t seed, cudaStream_t s) {
  device::launch(m.rows(), m.cols(), device::FillUniform<T>{m, lo, hi, seed}, s, "milora::cuda::kernels::fill_uniform");
}
template <class T> void fill_normal(DeviceView<T> m, double mean, double stddev, std::uint64_t seed, cudaStream_t s) {
  device::launch(m.rows(), m.cols(), device::FillNormal<T>{m, mean, stddev, seed}, s, "milora::cuda::kernels::fill_normal");
}
template <class From, class To> void convert(DeviceView<const From> src, DeviceView<To> dst, cudaStream_t s) {
  device::launch(dst.rows(), dst.cols(), device::Convert<From, To>{src, dst}, s, "milora::cuda::kernels::convert");
}
template <class T> void round_to_bf16(DeviceView<const T> src, DeviceView<bf16> dst, cudaStream_t s) {
  device::launch(dst.rows(), dst.cols(), device::RoundToBf16<T>{src, dst}, s, "milora::cuda::kernels::round_to_bf16");
}
template <class T> void widen_bf16(DeviceView<const bf16> src, DeviceView<T> dst, cudaStream_t s) {
  device::launch(dst.rows(), dst.cols(), device::WidenBf16<T>{src, dst}, s, "milora::cuda::kernels::widen_bf16");
}
template <class T> void mirror_upper_to_lower(DeviceView<T> m, cudaStream_t s) {
  device::launch(m.rows(), m.cols(), device::MirrorUpperToLower<T>{m}, s, "milora::cuda::kernels::mirror_upper_to_lower");
}
template <class T> void zero_strict_triangle(DeviceView<T> m, bool upper, cudaStream_t s) {
  device::launch(m.rows(), m.cols(), device::ZeroStrictTriangle<T>{m, upper}, s, "milora::cuda::kernels::zero_strict_triangle");
}

#define MILORA_CUDA_INSTANTIATE_KERNELS(T)                                                                 \
  template void scale<T>(DeviceView<T>, T, cudaStream_t);                                                  \
  template void axpy<T>(T, DeviceView<const T>, DeviceView<T>, cudaStream_t);                              \
  template void add_diagonal<T>(DeviceView<T>, T, cudaStream_t);                                           \
  template void add_row_broadcast<T>(DeviceView<T>, const T*, Index, cudaStream_t);                        \
  template void scale_rows<T>(DeviceView<T>, const T*, Index, cudaStream_t);                               \
  template void scale_columns<T>(DeviceView<T>, const T*, Index, cudaStream_t);                            \
  template void find_nonfinite<T>(DeviceView<const T>, int*, cudaStream_t);                                \
  template void squared_norm_partials<T>(DeviceView<const T>, double*, cudaStream_t);                      \
  template void adamw<T>(DeviceView<T>, DeviceView<const T>, DeviceView<T>, DeviceView<T>, AdamWStep,      \
                         cudaStream_t);                                                                    \
  template void fill_uniform<T>(DeviceView<T>, double, double, std::uint64_t, cudaStream_t);               \
  template void fill_normal<T>(DeviceView<T>, double, double, std::uint64_t, cudaStream_t);                \
  template void round_to_bf16<T>(DeviceView<const T>, DeviceView<bf16>, cudaStream_t);                      \
  template void widen_bf16<T>(DeviceView<const bf16>, DeviceView<T>, cudaStream_t);                         \
  template void mirror_upper_to_lower<T>(DeviceView<T>, cudaStream_t);                                     \
  template void zero_strict_triangle<T>(DeviceView<T>, bool, cudaStream_t);

MILORA_CUDA_INSTANTIATE_KERNELS(float)
MILORA_CUDA_INSTANTIATE_KERNELS(double)
#undef MILORA_CUDA_INSTANTIATE_KERNELS
template void convert<float, double>(DeviceView<const float>, DeviceView<double>, cudaStream_t);
template void convert<double, float>(DeviceView<const double>, DeviceView<float>, cudaStream_t);

}  // namespace milora::cuda::kernels
