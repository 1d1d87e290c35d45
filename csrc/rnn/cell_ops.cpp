// One timestep of each cell, forward and backward, for every device: two GEMMs (gemm.h) around one fused
// pointwise kernel. The forward returns what the backward needs (activated gates, ...) so nothing
// is recomputed.
#include <c10/core/DeviceGuard.h>

#include "rnn/checks.h"
#include "rnn/gemm.h"
#include "rnn/ops.h"
#include "rnn/pointwise.h"

namespace seqops {

namespace {

int64_t check_cell(const char* op, int64_t gates, const Tensor& input, const Tensor& hx,
                   const Tensor& w_ih, const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                   const std::optional<Tensor>& b_hh) {
  TORCH_CHECK(input.dim() == 2, op, ": expected input of shape [batch, input_size], got ", input.sizes());
  const int64_t H = check_weights(op, gates, input, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  check_state(op, input, hx, {input.size(0), H}, "hx");
  return H;
}

}  // namespace

// input: [B, I]; hx, cx: [B, H]; w_ih: [4H, I]; w_hh: [4H, H]
// -> h1, c1: [B, H]; gates: [B, 4H] activations (i, f, g, o), saved for the backward
std::tuple<Tensor, Tensor, Tensor> lstm_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& cx,
                                                     const Tensor& w_ih, const Tensor& w_hh,
                                                     const std::optional<Tensor>& b_ih,
                                                     const std::optional<Tensor>& b_hh) {
  const int64_t H = check_cell("lstm_cell", 4, input, hx, w_ih, w_hh, b_ih, b_hh);
  check_state("lstm_cell", input, cx, {input.size(0), H}, "cx");
  c10::OptionalDeviceGuard guard(input.device());
  Tensor gates = project(input, w_ih, b_ih, b_hh);
  Tensor c1 = at::empty({input.size(0), H}, input.options());
  Tensor h1 = at::empty_like(c1);
  const Tensor gates_h = recurrent_part(gates, hx, w_hh);
  lstm_forward_pointwise(gates, gates_h, cx.contiguous(), c1, h1);
  return {h1, c1, gates};
}

// grad_h1, grad_c1: [B, H]; the rest as saved by lstm_cell_forward
// -> grad_input [B, I], grad_hx [B, H], grad_cx [B, H], grad_w_ih [4H, I], grad_w_hh [4H, H], grad_bias [4H]
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_cell_backward(
    const Tensor& grad_h1, const Tensor& grad_c1, const Tensor& input, const Tensor& hx, const Tensor& cx,
    const Tensor& w_ih, const Tensor& w_hh, const Tensor& c1, const Tensor& gates) {
  const int64_t H = check_cell("lstm_cell_backward", 4, input, hx, w_ih, w_hh, std::nullopt, std::nullopt);
  for (const auto* t : {&grad_h1, &grad_c1, &cx, &c1})
    check_state("lstm_cell_backward", input, *t, {input.size(0), H}, "state or state gradient");
  check_state("lstm_cell_backward", input, gates, {input.size(0), 4 * H}, "gates");
  c10::OptionalDeviceGuard guard(input.device());
  Tensor grad_gates = at::empty({input.size(0), 4 * H}, input.options());
  Tensor grad_cx = grad_c1.contiguous().clone();
  lstm_backward_pointwise(gates.contiguous(), cx.contiguous(), c1.contiguous(), grad_h1.contiguous(), Tensor(), grad_cx,
                          grad_gates);
  return {grad_through_weight(grad_gates, w_ih), grad_through_weight(grad_gates, w_hh), grad_cx,
          grad_gates.t().mm(input), grad_gates.t().mm(hx), bias_grad(grad_gates)};
}

// input: [B, I]; hx: [B, H]; w_ih: [3H, I]; w_hh: [3H, H]
// -> h1: [B, H]; gates: [B, 3H] activations (r, z, n); hn: [B, H] = W_hn h + b_hn (saved)
std::tuple<Tensor, Tensor, Tensor> gru_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                                                    const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                                    const std::optional<Tensor>& b_hh) {
  const int64_t H = check_cell("gru_cell", 3, input, hx, w_ih, w_hh, b_ih, b_hh);
  c10::OptionalDeviceGuard guard(input.device());
  Tensor gates = project(input, w_ih, b_ih);
  Tensor gates_h = project(hx, w_hh, b_hh);
  Tensor h1 = at::empty({input.size(0), H}, input.options());
  Tensor hn = at::empty_like(h1);
  gru_forward_pointwise(gates, gates_h, hx.contiguous(), h1, hn);
  return {h1, gates, hn};
}

// -> grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih [3H], grad_b_hh [3H]
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_cell_backward(
    const Tensor& grad_h1, const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
    const Tensor& gates, const Tensor& hn) {
  const int64_t H = check_cell("gru_cell_backward", 3, input, hx, w_ih, w_hh, std::nullopt, std::nullopt);
  for (const auto* t : {&grad_h1, &hn})
    check_state("gru_cell_backward", input, *t, {input.size(0), H}, "state or state gradient");
  check_state("gru_cell_backward", input, gates, {input.size(0), 3 * H}, "gates");
  c10::OptionalDeviceGuard guard(input.device());
  Tensor grad_gates_x = at::empty({input.size(0), 3 * H}, input.options());
  Tensor grad_gates_h = at::empty_like(grad_gates_x);
  Tensor grad_hx = grad_h1.contiguous().clone();
  gru_backward_pointwise(gates.contiguous(), hn.contiguous(), hx.contiguous(), grad_hx, grad_gates_x,
                         grad_gates_h);
  grad_hx.add_(grad_through_weight(grad_gates_h, w_hh));
  return {grad_through_weight(grad_gates_x, w_ih), grad_hx, grad_gates_x.t().mm(input), grad_gates_h.t().mm(hx),
          bias_grad(grad_gates_x), bias_grad(grad_gates_h)};
}

// input: [B, I]; hx: [B, H]; w_ih: [H, I]; w_hh: [H, H] -> h1: [B, H] (also what the backward needs)
Tensor rnn_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                        const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, bool relu) {
  check_cell("rnn_cell", 1, input, hx, w_ih, w_hh, b_ih, b_hh);
  c10::OptionalDeviceGuard guard(input.device());
  Tensor pre = project(input, w_ih, b_ih, b_hh);
  const Tensor pre_h = recurrent_part(pre, hx, w_hh);
  rnn_forward_pointwise(pre, pre_h, pre, relu);  // in place: pre is a fresh buffer
  return pre;
}

// -> grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias [H]
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_cell_backward(const Tensor& grad_h1, const Tensor& input,
                                                                     const Tensor& hx, const Tensor& w_ih,
                                                                     const Tensor& w_hh, const Tensor& h1,
                                                                     bool relu) {
  const int64_t H = check_cell("rnn_cell_backward", 1, input, hx, w_ih, w_hh, std::nullopt, std::nullopt);
  check_state("rnn_cell_backward", input, grad_h1, {input.size(0), H}, "grad_h1");
  check_state("rnn_cell_backward", input, h1, {input.size(0), H}, "h1");
  c10::OptionalDeviceGuard guard(input.device());
  Tensor grad_pre = at::empty({input.size(0), H}, input.options());
  rnn_backward_pointwise(h1.contiguous(), grad_h1.contiguous(), Tensor(), grad_pre, relu);
  return {grad_through_weight(grad_pre, w_ih), grad_through_weight(grad_pre, w_hh), grad_pre.t().mm(input),
          grad_pre.t().mm(hx), bias_grad(grad_pre)};
}

}  // namespace seqops
