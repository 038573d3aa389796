// milora: low-rank adapters (LoRA, PiSSA, MiLoRA) over pluggable tensor backends.
// The umbrella header: everything that needs no optional dependency beyond Eigen.
#pragma once

#include "milora/adapters.hpp"
#include "milora/backend/eigen.hpp"
#include "milora/calibration/input_statistics.hpp"
#include "milora/core/adapter.hpp"
#include "milora/core/backend.hpp"
#include "milora/core/config.hpp"
#include "milora/core/errors.hpp"
#include "milora/core/init_policy.hpp"
#include "milora/core/linear_layer.hpp"
#include "milora/core/log.hpp"
#include "milora/core/spectral_solver.hpp"
#include "milora/core/weight_storage.hpp"
#include "milora/optim/adamw.hpp"
#include "milora/spectral/cholesky_krylov.hpp"
#include "milora/spectral/cusolver_randomized.hpp"
#include "milora/spectral/exact.hpp"
#include "milora/spectral/randomized.hpp"
