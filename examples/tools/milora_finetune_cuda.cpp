// milora-finetune's CUDA half: the model, its trainer and every init policy on CudaBackend<float>, in a
// translation unit of their own (finetune_run.hpp says why). Compiled only with the LLaMA's CUDA
// kernels (MILORA_LLAMA_CUDA).
#include "finetune_run.hpp"

namespace llama::finetune {
template void run_on<milora::CudaBackend<float>>(const Options&);
}  // namespace llama::finetune
