// The file layer: safetensors, GGUF, Hugging Face model folders, PEFT adapter folders.
// Needs nlohmann/json (link milora::io, which exists when nlohmann_json was found).
#pragma once

#include "milora/io/dtype.hpp"
#include "milora/io/gguf.hpp"
#include "milora/io/hf_model.hpp"
#include "milora/io/host_matrix.hpp"
#include "milora/io/json.hpp"
#include "milora/io/mapped_file.hpp"
#include "milora/io/peft.hpp"
#include "milora/io/safetensors.hpp"
