// Compile this file once (with nvcc) into any program that uses CudaBackend: it holds the
// definitions of the kernels declared in kernels.hpp. CMake's milora::cuda target adds it to the
// targets that link it.
#include "milora/backend/cuda/kernels.cuh"
