// Exceptions thrown by milora, and the helpers that build their messages.
//
// Every check runs *before* any state is changed, so a caught exception leaves the adapter and the
// wrapped layer exactly as they were. Messages name the offending shape or value, because the
// person reading them is usually staring at a model with hundreds of layers.
#pragma once

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace milora {

/// Signed type of all sizes and indices (the same as Eigen::Index). Not `index`: POSIX declares a
/// function of that name, so `using namespace milora;` would make every use of it ambiguous.
using Index = std::ptrdiff_t;

/// A matrix or vector had the wrong shape (e.g. input width != in_features, rank > min(out, in)).
struct shape_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// A value was out of its domain: NaN/Inf in a weight, a non-positive alpha, a bad hyperparameter.
struct value_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

/// An operation is not allowed in the object's current state (e.g. backward while merged).
struct state_error : std::logic_error {
  using std::logic_error::logic_error;
};

/// A numerical routine (LAPACK, cuSOLVER, ...) reported failure.
struct numerical_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// An accelerator or its libraries refused: the CUDA runtime, cuBLAS, cuSOLVER (no device, out
/// of device memory, a kernel that failed to launch). The message names the call.
struct device_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// A file from outside broke a rule of its format (safetensors, config.json, a PEFT adapter).
/// The message names the file, the entry and the rule.
struct format_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The operating system refused: a file could not be opened, mapped, written or renamed.
struct io_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

namespace detail {

/// Concatenates any streamable arguments into one message.
template <class... Args>
std::string concat(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  return os.str();
}

/// "3x4", the way shapes appear in every message.
inline std::string shape_str(Index rows, Index cols) { return concat(rows, 'x', cols); }

/// Throws shape_error unless a (source) and b (destination) have one shape: "WHAT: RxC into RxC".
inline void require_same_shape(Index a_rows, Index a_cols, Index b_rows, Index b_cols, const char* what) {
  if (a_rows != b_rows || a_cols != b_cols)
    throw shape_error(concat(what, ": ", shape_str(a_rows, a_cols), " into ", shape_str(b_rows, b_cols)));
}

}  // namespace detail
}  // namespace milora
