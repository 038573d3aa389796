// Compile this file once (with nvcc) into a program that runs the reference LLaMA on CudaBackend:
// it holds the definitions of the launchers declared in kernels_cuda_launch.hpp.
#include "kernels_cuda.cuh"
