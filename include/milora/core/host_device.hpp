// MILORA_HOST_DEVICE marks the few functions that CUDA kernels call as well as host code (the
// counter-based random numbers, the accessors of a device matrix view). Under a host compiler it
// is empty.
#pragma once

#if defined(__CUDACC__)
#define MILORA_HOST_DEVICE __host__ __device__
#else
#define MILORA_HOST_DEVICE
#endif
