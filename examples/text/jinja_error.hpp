// The one error a chat template raises, for its callers to catch without the interpreter's headers.
#pragma once

#include "milora/core/errors.hpp"

namespace milora::text::jinja {

/// An error in a template (its syntax, a type, raise_exception): the message says where.
struct template_error : milora::value_error {
  using milora::value_error::value_error;
};

}  // namespace milora::text::jinja
