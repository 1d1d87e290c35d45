// Argument validation shared by the cell and layer ops: the C++ ops can be called directly through
// torch.ops.seqops, so they check everything a bad call could turn into an out-of-bounds access.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace seqops {

using at::Tensor;

inline void check_same_device_dtype(const char* op, const Tensor& ref, const Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but input is on ",
              ref.device());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but input has dtype ", ref.scalar_type(), "; all tensors must share one dtype");
}

inline void check_shape(const char* op, const Tensor& t, at::IntArrayRef expected, const char* name) {
  TORCH_CHECK(t.sizes() == expected, op, ": expected ", name, " of shape ", expected, ", got ", t.sizes());
}

inline void check_floating(const char* op, const Tensor& input) {
  const auto st = input.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16, op,
              ": expected a floating-point input (float32, float64, float16 or bfloat16), got ", st);
}

// Weights of one layer-direction: w_ih [G*H, I], w_hh [G*H, P], biases [G*H], w_hr [P, H].
// Returns H.
inline int64_t check_weights(const char* op, int64_t gates, const Tensor& input, const Tensor& w_ih,
                             const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                             const std::optional<Tensor>& b_hh, const std::optional<Tensor>& w_hr) {
  check_floating(op, input);
  TORCH_CHECK(w_ih.dim() == 2 && w_hh.dim() == 2, op, ": w_ih and w_hh must be 2-D, got ", w_ih.dim(),
              "-D and ", w_hh.dim(), "-D");
  TORCH_CHECK(w_ih.size(0) % gates == 0 && w_ih.size(0) > 0, op, ": w_ih.size(0) = ", w_ih.size(0),
              " must be a positive multiple of ", gates, " (the number of gates)");
  const int64_t H = w_ih.size(0) / gates;
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  check_same_device_dtype(op, input, w_ih, "w_ih");
  check_same_device_dtype(op, input, w_hh, "w_hh");
  TORCH_CHECK(input.size(-1) == w_ih.size(1), op, ": input has inconsistent input_size: got ", input.size(-1),
              " expected ", w_ih.size(1));
  check_shape(op, w_hh, {gates * H, P}, "w_hh");
  for (const auto* b : {&b_ih, &b_hh}) {
    if (b->has_value()) {
      check_same_device_dtype(op, input, **b, "bias");
      check_shape(op, **b, {gates * H}, "bias");
    }
  }
  if (w_hr.has_value()) {
    TORCH_CHECK(w_hr->dim() == 2, op, ": w_hr must be 2-D");
    check_same_device_dtype(op, input, *w_hr, "w_hr");
    check_shape(op, *w_hr, {P, H}, "w_hr");
  }
  return H;
}

inline void check_state(const char* op, const Tensor& input, const Tensor& state, at::IntArrayRef expected,
                        const char* name) {
  check_same_device_dtype(op, input, state, name);
  check_shape(op, state, expected, name);
}

}  // namespace seqops
