// The element-wise kernels of CudaBackend, declared for host code. Their definitions are in
// kernels.cuh, which only nvcc can compile; a program compiles them once by adding
// milora/backend/cuda/kernels.cu to its sources (CMake's milora::cuda target does it), and every
// other file, compiled by the host compiler, links to them. That keeps the headers usable from a
// framework's ordinary C++ files: only one .cu file is needed, not an nvcc build of everything.
//
// Each launcher queues its kernel on `stream` and checks the launch; it does not synchronise.
// A vector argument (a bias, a diagonal) is a pointer with the stride between its elements.
// Instantiated for float and double.
#pragma once

#include <cstdint>

#include "milora/backend/cuda/memory.hpp"
#include "milora/core/backend.hpp"
#include "milora/core/bf16.hpp"

namespace milora::cuda::kernels {

/// m = a * m, and m = 0 when a == 0 (clearing NaN too, as BLAS does for beta = 0).
template <class T> void scale(DeviceView<T> m, T a, cudaStream_t stream);
/// y += a * x (same shapes).
template <class T> void axpy(T a, DeviceView<const T> x, DeviceView<T> y, cudaStream_t stream);
/// m(i, i) += a.
template <class T> void add_diagonal(DeviceView<T> m, T a, cudaStream_t stream);
/// m(i, j) += row[j * stride].
template <class T> void add_row_broadcast(DeviceView<T> m, const T* row, Index stride, cudaStream_t stream);
/// m(i, j) *= d[i * stride].
template <class T> void scale_rows(DeviceView<T> m, const T* d, Index stride, cudaStream_t stream);
/// m(i, j) *= d[j * stride].
template <class T> void scale_columns(DeviceView<T> m, const T* d, Index stride, cudaStream_t stream);
/// *flag = 1 if any entry is NaN or infinite (*flag must be 0 before).
template <class T> void find_nonfinite(DeviceView<const T> m, int* flag, cudaStream_t stream);
/// Number of partial sums squared_norm_partials writes (a fixed launch, so the sum's order is fixed).
inline constexpr int squared_norm_blocks = 256;
/// partials[b] = sum of the squares (in double) of the entries that block b visits.
template <class T> void squared_norm_partials(DeviceView<const T> m, double* partials, cudaStream_t stream);
/// One AdamW step on every element (milora::AdamWStep states the formula).
template <class T>
void adamw(DeviceView<T> p, DeviceView<const T> g, DeviceView<T> m, DeviceView<T> v, AdamWStep step, cudaStream_t stream);
/// Element (i, j) = draw i * cols + j of milora/core/random.hpp, as on the CPU backends.
template <class T> void fill_uniform(DeviceView<T> m, double lo, double hi, std::uint64_t seed, cudaStream_t stream);
template <class T> void fill_normal(DeviceView<T> m, double mean, double stddev, std::uint64_t seed, cudaStream_t stream);
/// dst = static_cast<To>(src) (same shapes).
template <class From, class To> void convert(DeviceView<const From> src, DeviceView<To> dst, cudaStream_t stream);
/// dst = src rounded to bf16, to nearest even (double through float, as on the CPU).
template <class T> void round_to_bf16(DeviceView<const T> src, DeviceView<bf16> dst, cudaStream_t stream);
/// dst = src widened from bf16 (exact).
template <class T> void widen_bf16(DeviceView<const bf16> src, DeviceView<T> dst, cudaStream_t stream);
/// Square m: m(i, j) = m(j, i) for j < i (the strict lower triangle copies the upper one).
template <class T> void mirror_upper_to_lower(DeviceView<T> m, cudaStream_t stream);
/// Square m: zero the strict upper triangle (j > i) or, with upper = false, the strict lower one.
template <class T> void zero_strict_triangle(DeviceView<T> m, bool upper, cudaStream_t stream);

}  // namespace milora::cuda::kernels
