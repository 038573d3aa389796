// The LLaMA kernels' math, one row (or one element) at a time, for host and device.
//
// The CUDA kernels (kernels_cuda.cuh) run these functions, one GPU thread per row or element;
// compiled by the host compiler they are the same code, which is how CI, which has no GPU,
// checks the math the GPU runs: tests/llama/test_kernels.cpp compares them with the CPU kernels
// (kernels_cpu.hpp, written separately with Eigen) on random rows. Only the launch geometry and
// the upload of tokens are left to the GPU parity test (tests/cuda/test_llama_parity.cpp).
//
// Reductions and exponentials run in double, as in the CPU kernels. Pointers address contiguous
// rows; a 1 x n vector (a norm weight, 1/rms) is a plain array.
#pragma once

#include <cmath>
#include <cstdint>

#include "milora/core/backend.hpp"
#include "milora/core/host_device.hpp"

namespace llama::rows {

using milora::Index;

/// y = w * (x * rstd), rstd = 1/sqrt(mean(x^2) + eps); returns rstd.
template <class T>
MILORA_HOST_DEVICE T rmsnorm_forward(const T* x, const T* w, Index c, double eps, T* y) {
  double ss = 0;
  for (Index j = 0; j < c; ++j) ss += double(x[j]) * double(x[j]);
  const T r = T(1 / sqrt(ss / double(c) + eps));
  for (Index j = 0; j < c; ++j) y[j] = w[j] * (x[j] * r);  // transformers' two roundings, in its order
  return r;
}

/// dx += r * (w*dy) - r^3 / c * x * sum(w*dy*x).
template <class T>
MILORA_HOST_DEVICE void rmsnorm_backward(const T* dy, const T* x, const T* w, double r, Index c, T* dx) {
  double dot = 0;
  for (Index j = 0; j < c; ++j) dot += double(w[j]) * double(dy[j]) * double(x[j]);
  const double k = r * r * r * dot / double(c);
  for (Index j = 0; j < c; ++j) dx[j] += T(r * double(w[j]) * double(dy[j]) - k * double(x[j]));
}

/// One head in place, rotate-half layout: x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin
/// (sign = -1: the inverse rotation, which is the backward pass). cos, sin: the position's row.
template <class T>
MILORA_HOST_DEVICE void rope_head(T* p, const T* cos, const T* sin, Index half, double sign) {
  for (Index i = 0; i < half; ++i) {
    const T c = cos[i], s = T(sign) * sin[i];
    const T a = p[i], b = p[i + half];
    p[i] = a * c - b * s;
    p[i + half] = b * c + a * s;
  }
}

/// Softmax of p[0..i] in place (the positions query i sees), zero after, up to seq.
template <class T>
MILORA_HOST_DEVICE void softmax_causal(T* p, Index i, Index seq) {
  T mx = p[0];
  for (Index j = 1; j <= i; ++j) mx = p[j] > mx ? p[j] : mx;
  double sum = 0;
  for (Index j = 0; j <= i; ++j) {
    p[j] = T(exp(double(p[j] - mx)));
    sum += double(p[j]);
  }
  const T inv = T(1 / sum);
  for (Index j = 0; j <= i; ++j) p[j] *= inv;
  for (Index j = i + 1; j < seq; ++j) p[j] = T(0);
}

/// dp <- dS = p * (dp - sum_j p_j dp_j) for row i of a causal softmax (zero after i).
template <class T>
MILORA_HOST_DEVICE void softmax_causal_backward(const T* p, T* dp, Index i, Index seq) {
  double dot = 0;
  for (Index j = 0; j <= i; ++j) dot += double(p[j]) * double(dp[j]);
  for (Index j = 0; j <= i; ++j) dp[j] = T(double(p[j]) * (double(dp[j]) - dot));
  for (Index j = i + 1; j < seq; ++j) dp[j] = T(0);
}

template <class T>
MILORA_HOST_DEVICE T sigmoid(T g) {
  return T(1 / (1 + exp(-double(g))));
}

/// silu(g) * u, silu(g) = g * sigmoid(g).
template <class T>
MILORA_HOST_DEVICE T swiglu_forward(T g, T u) {
  return g * sigmoid(g) * u;
}

/// dgate = dout * u * sigma(g) (1 + g (1 - sigma(g))), dup = dout * silu(g).
template <class T>
MILORA_HOST_DEVICE void swiglu_backward(T dout, T g, T u, T* dgate, T* dup) {
  const T sg = sigmoid(g);
  *dup = dout * g * sg;
  *dgate = dout * u * sg * (T(1) + g * (T(1) - sg));
}

/// logsumexp(z) - z[t] for one row of logits; unless d is null, d = k * softmax(z) - k * onehot(t).
template <class T>
MILORA_HOST_DEVICE double cross_entropy(const T* z, Index vocab, std::int32_t t, double k, T* d) {
  T mx = z[0];
  for (Index j = 1; j < vocab; ++j) mx = z[j] > mx ? z[j] : mx;
  double sum = 0;
  for (Index j = 0; j < vocab; ++j) sum += exp(double(z[j] - mx));
  if (d != nullptr) {
    const double scale = k / sum;
    for (Index j = 0; j < vocab; ++j) d[j] = T(exp(double(z[j] - mx)) * scale);
    d[t] -= T(k);
  }
  return double(mx) + log(sum) - double(z[t]);
}

}  // namespace llama::rows
