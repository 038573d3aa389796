// Device memory for CudaBackend: an RAII buffer, the owning row-major matrix and its views.
//
// Layout: row-major like every milora backend (a weight is out x in), with a row stride `ld` >= cols
// so that a view can be a block of a larger matrix or another framework's tensor. cuBLAS and
// cuSOLVER are column-major; a row-major r x c matrix with stride ld is, to them, the column-major
// c x r matrix of its transpose with leading dimension ld. milora/backend/cuda.hpp uses that
// identity instead of copying (and transposes explicitly only where cuSOLVER needs the other
// orientation).
//
// A matrix's memory is device memory (no managed memory) from the device's stream-ordered pool
// (cudaMallocAsync, plain cudaMalloc where the device has no pool): it lives on the device that was
// current when it was made, and its work, its allocation and its release are ordered on the stream
// of the thread that made it (milora/backend/cuda/context.hpp). Use a matrix from the thread that
// made it, or synchronise.
#pragma once

#include <atomic>
#include <cstddef>
#include <memory>
#include <type_traits>
#include <utility>

#include "milora/backend/cuda/context.hpp"
#include "milora/core/host_device.hpp"

namespace milora::cuda {

/// count elements of T in device memory; freed on destruction. Zero elements allocate nothing.
/// The memory comes from the device's stream-ordered pool on the calling thread's stream when the
/// device has one (cudaMallocAsync; freed with cudaFreeAsync on that stream, no device-wide
/// synchronisation), else from cudaMalloc (context.hpp says why).
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count == 0) return;
    const Context& ctx = context();  // throws device_error without a device
    void* p = nullptr;
    if (ctx.stream_ordered_memory()) {
      check(cudaMallocAsync(&p, count * sizeof(T), ctx.stream()),
            detail::concat("cudaMallocAsync(", count * sizeof(T), " bytes)").c_str());
      stream_ = ctx.stream();
      stream_alive_ = ctx.alive();
    } else {
      check(cudaMalloc(&p, count * sizeof(T)), detail::concat("cudaMalloc(", count * sizeof(T), " bytes)").c_str());
    }
    data_ = static_cast<T*>(p);
  }
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)),
        count_(std::exchange(o.count_, 0)),
        stream_(std::exchange(o.stream_, nullptr)),
        stream_alive_(std::move(o.stream_alive_)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      data_ = std::exchange(o.data_, nullptr);
      count_ = std::exchange(o.count_, 0);
      stream_ = std::exchange(o.stream_, nullptr);
      stream_alive_ = std::move(o.stream_alive_);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() const { return data_; }
  std::size_t size() const { return count_; }

 private:
  void reset() noexcept {
    if (data_ != nullptr) {
      // In stream order while the allocating thread's stream exists; after that thread exited (its
      // context synchronised the stream before destroying it) a plain cudaFree, which waits anyway.
      if (stream_ != nullptr && stream_alive_ && stream_alive_->load()) (void)cudaFreeAsync(data_, stream_);
      else (void)cudaFree(data_);
    }
    data_ = nullptr;
    count_ = 0;
    stream_ = nullptr;
    stream_alive_.reset();
  }
  T* data_ = nullptr;
  std::size_t count_ = 0;
  cudaStream_t stream_ = nullptr;  // set for pool memory: the stream it is ordered on
  std::shared_ptr<const std::atomic<bool>> stream_alive_;
};

/// A non-owning rows x cols row-major window on device memory with row stride ld. T may be const.
template <class T>
class DeviceView {
 public:
  DeviceView() = default;
  DeviceView(T* data, Index rows, Index cols, Index ld) : data_(data), rows_(rows), cols_(cols), ld_(ld) {}
  /// A mutable view is also a read-only one.
  template <class U>
    requires(std::is_const_v<T> && std::is_same_v<std::remove_const_t<T>, U>)
  DeviceView(const DeviceView<U>& v) : data_(v.data()), rows_(v.rows()), cols_(v.cols()), ld_(v.ld()) {}

  // Kernels read views passed by value, so the accessors are host and device functions.
  MILORA_HOST_DEVICE T* data() const { return data_; }
  MILORA_HOST_DEVICE Index rows() const { return rows_; }
  MILORA_HOST_DEVICE Index cols() const { return cols_; }
  MILORA_HOST_DEVICE Index ld() const { return ld_; }
  MILORA_HOST_DEVICE Index size() const { return rows_ * cols_; }
  /// Whether the rows follow each other without gaps (one memcpy, one kernel over size()).
  bool contiguous() const { return ld_ == cols_ || rows_ <= 1; }

 private:
  T* data_ = nullptr;
  Index rows_ = 0, cols_ = 0, ld_ = 0;
};

/// The owning row-major matrix of CudaBackend (ld = cols). Copying copies the values on the device.
template <class T>
class DeviceMatrix {
 public:
  DeviceMatrix() = default;
  DeviceMatrix(Index rows, Index cols) : rows_(rows), cols_(cols) {
    if (rows < 0 || cols < 0) throw shape_error(detail::concat("DeviceMatrix: ", detail::shape_str(rows, cols)));
    buffer_ = DeviceBuffer<T>(static_cast<std::size_t>(rows) * static_cast<std::size_t>(cols));
  }
  DeviceMatrix(const DeviceMatrix& o) : DeviceMatrix(o.rows_, o.cols_) {
    if (buffer_.size() > 0)
      check(cudaMemcpyAsync(buffer_.data(), o.buffer_.data(), buffer_.size() * sizeof(T),
                            cudaMemcpyDeviceToDevice, context().stream()),
            "cudaMemcpyAsync (DeviceMatrix copy)");
  }
  DeviceMatrix& operator=(const DeviceMatrix& o) {
    if (this != &o) *this = DeviceMatrix(o);
    return *this;
  }
  DeviceMatrix(DeviceMatrix&& o) noexcept
      : rows_(std::exchange(o.rows_, 0)), cols_(std::exchange(o.cols_, 0)), buffer_(std::move(o.buffer_)) {}
  DeviceMatrix& operator=(DeviceMatrix&& o) noexcept {
    if (this != &o) {
      rows_ = std::exchange(o.rows_, 0);
      cols_ = std::exchange(o.cols_, 0);
      buffer_ = std::move(o.buffer_);
    }
    return *this;
  }

  T* data() { return buffer_.data(); }
  const T* data() const { return buffer_.data(); }
  Index rows() const { return rows_; }
  Index cols() const { return cols_; }
  Index ld() const { return cols_; }
  Index size() const { return rows_ * cols_; }

  // Lvalues only for the mutable view, like Eigen::Ref: a view of a temporary would dangle.
  operator DeviceView<T>() & { return {data(), rows_, cols_, cols_}; }
  operator DeviceView<const T>() const& { return {data(), rows_, cols_, cols_}; }

 private:
  Index rows_ = 0, cols_ = 0;
  DeviceBuffer<T> buffer_;
};

}  // namespace milora::cuda
