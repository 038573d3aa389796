// LeadingQR, the OLoRA start: from W's QR factorisation W = Q R (Householder, as torch.linalg.qr),
// B = Q[:, :r] (orthonormal columns), A = R[:r, :], and the base becomes W - s*B*A.
// Büyükakyüz, "OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models", arXiv:2406.01775
// (2024); PEFT init_lora_weights="olora".
//
// Householder QR builds column j of Q from W's first j + 1 columns only, so Q[:, :r] is the Q of
// W[:, :r] alone, and R[:r, :] = Q[:, :r]^T W (rows of Q^T W = R). We therefore factor the m x r
// slice instead of all of W: O(m r^2 + m n r) instead of O(m n min(m, n)), with the same factors,
// for tall and wide W alike. B*A = Q_r Q_r^T W is W projected onto the span of its first r columns.
// The signs of Q's columns (and A's rows) follow the backend's QR; B*A does not depend on them.
#pragma once

#include <string_view>

#include "milora/core/init_policy.hpp"

namespace milora {

struct LeadingQR {
  static constexpr std::string_view name = "olora";
  static constexpr bool residual = true;  ///< the base becomes W - s*B*A

  template <Backend B>
  AdapterFactors<B> initialize(const_view_t<B> w, const AdapterConfig& cfg) const {
    const Index m = B::rows(w), n = B::cols(w), r = cfg.rank;
    auto qr = B::qr(B::cblock(w, 0, 0, m, r));  // Q: m x r, orthonormal columns
    AdapterFactors<B> f{B::zeros(r, n), std::move(qr.Q), residual};
    B::gemm(1, f.B, Trans::yes, w, Trans::no, 0, f.A);  // A = Q_r^T W = R[:r, :]
    return f;
  }
};

}  // namespace milora
