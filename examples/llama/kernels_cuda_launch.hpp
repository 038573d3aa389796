// The launchers of the LLaMA's CUDA kernels: declared here for host code (kernels_cuda.hpp),
// defined in kernels_cuda.cuh for nvcc. Each queues its kernel on the stream and checks the
// launch; none synchronises. Instantiated for float and double.
#pragma once

#include "kernels.hpp"
#include "kernels_rows.hpp"
#include "milora/backend/cuda/memory.hpp"
#include "milora/backend/cuda/status.hpp"

namespace llama {

namespace cuda_launch {
using milora::cuda::DeviceView;

template <class T> void embed(DeviceView<const T> table, const Token* tokens, DeviceView<T> out, cudaStream_t s);
template <class T> void embed_backward(DeviceView<const T> dout, const Token* tokens, DeviceView<T> dtable, cudaStream_t s);
template <class T>
void rmsnorm_forward(DeviceView<const T> x, const T* w, double eps, DeviceView<T> y, T* rstd, cudaStream_t s);
template <class T>
void rmsnorm_backward(DeviceView<const T> dy, DeviceView<const T> x, const T* w, const T* rstd, DeviceView<T> dx,
                      cudaStream_t s);
template <class T>
void rmsnorm_backward_weight(DeviceView<const T> dy, DeviceView<const T> x, const T* rstd, T* dw, cudaStream_t s);
template <class T>
void rope(DeviceView<T> x, DeviceView<const T> cos, DeviceView<const T> sin, Index seq, Index head_dim, double sign,
          cudaStream_t s);
/// rope at positions[r] (device) for row r.
template <class T>
void rope_positions(DeviceView<T> x, DeviceView<const T> cos, DeviceView<const T> sin, Index head_dim, const std::int32_t* positions,
                    cudaStream_t s);
/// New query rows against a key/value cache: out's rows; start[b] (device): sequence b's first slot.
template <class T>
void attention_cached(const rows::CachedAttention<T>& a, Index batch, const std::int32_t* start, DeviceView<T> out, cudaStream_t s);
/// The fused attention's forward: out, and lse[r] for every query row r < batch*heads*seq.
template <class T>
void attention_forward(const rows::FusedAttention<T>& a, Index batch, DeviceView<T> out, T* lse, cudaStream_t s);
/// Its backward: delta (batch*heads*seq, scratch) = rowsum(dO * O), then dq by query rows and dk, dv
/// by key rows (all overwritten).
template <class T>
void attention_backward(const rows::FusedAttention<T>& a, Index batch, DeviceView<const T> dout, DeviceView<const T> out,
                        const T* lse, T* delta, DeviceView<T> dq, DeviceView<T> dk, DeviceView<T> dv, cudaStream_t s);
template <class T> void swiglu_forward(DeviceView<const T> gate, DeviceView<const T> up, DeviceView<T> out, cudaStream_t s);
template <class T>
void swiglu_backward(DeviceView<const T> dout, DeviceView<const T> gate, DeviceView<const T> up, DeviceView<T> dgate,
                     DeviceView<T> dup, cudaStream_t s);
/// row_loss[i] = the row's loss (0 for kIgnoreIndex); dlogits (when its data is not null) as the
/// CPU kernel writes it, with k = grad_scale / count.
template <class T>
void cross_entropy(DeviceView<const T> logits, const Token* targets, double k, DeviceView<T> dlogits, double* row_loss,
                   cudaStream_t s);
}  // namespace cuda_launch

}  // namespace llama
