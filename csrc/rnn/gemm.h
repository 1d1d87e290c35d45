// The GEMMs of the recurrent ops, all through ATen (cuBLAS on CUDA, the CPU BLAS / oneDNN on the CPU).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace seqops {

using at::Tensor;

// Input projection of all rows at once: x [N, I] -> [N, G*H] = x W^T + b1 + b2 (biases optional).
// Folding the biases into the GEMM's beta term costs nothing extra.
inline Tensor project(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b1,
                      const std::optional<Tensor>& b2 = std::nullopt) {
  if (b1.has_value() && b2.has_value()) return at::addmm(*b1 + *b2, x, w.t());
  if (b1.has_value()) return at::addmm(*b1, x, w.t());
  if (b2.has_value()) return at::addmm(*b2, x, w.t());
  return at::mm(x, w.t());
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
