// The GEMMs of the recurrent ops, all through ATen (cuBLAS on CUDA, the CPU BLAS / oneDNN on the CPU).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "rnn/step_gemm.h"

namespace seqops {

using at::Tensor;

// Input projection of all rows at once: x [N, I] -> [N, G*H] = x W^T + b1 + b2 (biases optional).
// Large N goes through StepGemm, i.e. oneDNN with the bias fused into the GEMM on the CPU (measured ~20% faster
// than MKL's addmm, whose bias broadcast alone is an extra [N, G*H] pass); a single step (the cells) stays
// on at::addmm, where reordering the weight would cost more than the GEMM.
inline Tensor project(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b1,
                      const std::optional<Tensor>& b2 = std::nullopt) {
  std::optional<Tensor> bias = b1;
  if (b1.has_value() && b2.has_value())
    bias = *b1 + *b2;
  else if (b2.has_value())
    bias = b2;
  constexpr int64_t kMinRowsToReorder = 512;
  if (x.size(0) >= kMinRowsToReorder) return StepGemm(w, x.size(0))(x, bias);
  return bias.has_value() ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
}

// out [B, G*H] += h [B, P] W^T, in place (out is a row range of a contiguous buffer).
inline void add_recurrent(const Tensor& out, const Tensor& h, const Tensor& w) {
  out.addmm_(h, w.t());
}

// Sum over rows, accumulated in fp32 for reduced precision (at::sum does).
inline Tensor bias_grad(const Tensor& grad_gates) {
  return grad_gates.sum(0);
}

}  // namespace seqops
