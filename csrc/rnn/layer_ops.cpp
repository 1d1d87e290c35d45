// One layer, one direction, the whole sequence, for every device. The time loop runs here, not in Python:
// one GEMM projects the input of all steps; each step adds its recurrent GEMM in place and runs one fused
// pointwise kernel that writes straight into the output. The backward walks the steps in reverse and does
// the weight gradients as large GEMMs after the loop. Packed sequences shrink the active batch per step.
//
// The recurrent state is carried as a view of the previous step's output (CarriedState), so no step copies
// it; the step GEMM's result goes straight into the fused pointwise kernel, which adds it to the input
// projection as it reads both. Packed input needs no special case: a row's state stays put once its sequence
// has ended (or, running in reverse, until it starts), so h ends as h_n, and in the backward the gradient
// states end as the gradients of h0/c0.
#include <c10/core/DeviceGuard.h>

#include "rnn/carried_state.h"
#include "rnn/checks.h"
#include "rnn/gemm.h"
#include "rnn/ops.h"
#include "rnn/pointwise.h"
#include "rnn/step_gemm.h"
#include "rnn/steps.h"

namespace seqops {

namespace {

// Rows [offset, offset + batch) of a [N, F] tensor, or rows [0, batch) of a [B, F] state.
inline Tensor rows(const Tensor& t, const Step& s) { return t.narrow(0, s.offset, s.batch); }
inline Tensor active(const Tensor& state, const Step& s) { return state.narrow(0, 0, s.batch); }

struct LayerArgs {
  TimeLayout layout;
  Tensor input2d;  // [N, I]
  int64_t H = 0;
};

LayerArgs check_layer(const char* op, int64_t gates, const Tensor& input, const OptTensor& batch_sizes,
                      const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                      const OptTensor& b_hh, const OptTensor& w_hr) {
  LayerArgs a;
  a.layout = make_layout(op, input, batch_sizes);
  a.H = check_weights(op, gates, input, w_ih, w_hh, b_ih, b_hh, w_hr);
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : a.H;
  check_state(op, input, hx, {a.layout.batch, P}, "hx");
  a.input2d = input.reshape({a.layout.rows, input.size(-1)});
  return a;
}

// The output or its gradient, [T, B, F] (padded) or [N, F] (packed) -> [N, F] contiguous. Checked like every
// other argument: the kernels read F columns of each row, on input's device; the exact shape, so a tensor laid
// out for another layout (batch-first, or flattened) is refused rather than read in the wrong order.
Tensor flat_rows(const char* op, const Tensor& t, const Tensor& input, const TimeLayout& layout, int64_t width,
                 const char* name) {
  check_same_device_dtype(op, input, t, name);
  if (layout.packed) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == layout.rows && t.size(1) == width, op, ": ", name, " has shape ",
                t.sizes(), ", expected [", layout.rows, ", ", width, "]");
  } else {
    TORCH_CHECK(t.dim() == 3 && t.size(0) == input.size(0) && t.size(1) == input.size(1) && t.size(2) == width, op,
                ": ", name, " has shape ", t.sizes(), ", expected [", input.size(0), ", ", input.size(1), ", ", width,
                "]");
  }
  return t.reshape({layout.rows, width}).contiguous();
}

// dL/dinput = dL/dgates @ W_ih, one GEMM over all steps; skipped (empty) when the input needs no gradient,
// as a first layer's data usually does.
Tensor input_grad_or_empty(bool wanted, const Tensor& grad_gates, const Tensor& w_ih, const Tensor& input) {
  if (!wanted) return at::empty({0}, input.options());
  return grad_through_weight(grad_gates, w_ih).view(input.sizes());
}

// [N, P] -> [T, B, P] for padded input. Not a tracked view: an op output that autograd sees as a view of a
// tensor it never returned may not be modified in place (torch.nn's output may: `out.add_(1)` must work).
Tensor shape_output(const Tensor& out2d, const Tensor& input, const TimeLayout& layout) {
  if (layout.packed) return out2d;
  return at::_unsafe_view(out2d, {input.size(0), input.size(1), out2d.size(1)});
}

}  // namespace

// input: [T, B, I] or packed [N, I]; hx: [B, P]; cx: [B, H]; w_ih: [4H, I]; w_hh: [4H, P]; w_hr: [P, H]
// -> output [T, B, P] / [N, P]; h_n [B, P]; c_n [B, H];
//    saved: gates [N, 4H] activations (i, f, g, o); cells [N, H] c of every step; proj_in [N, H] o*tanh(c)
//    before the projection (empty without w_hr)
Tensor6 lstm_layer_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& hx, const Tensor& cx,
                           const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                           const OptTensor& w_hr, bool reverse) {
  const char* op = "lstm_layer";
  auto a = check_layer(op, 4, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, w_hr);
  const int64_t H = a.H, N = a.layout.rows;
  check_state(op, input, cx, {a.layout.batch, H}, "cx");
  c10::OptionalDeviceGuard guard(input.device());
  const bool proj = w_hr.has_value();
  Tensor gates = project(a.input2d, w_ih, b_ih, b_hh);
  Tensor output = at::empty({N, hx.size(1)}, input.options());
  Tensor cells = at::empty({N, H}, input.options());
  Tensor proj_in = at::empty({proj ? N : 0, H}, input.options());
  const StepGemm recurrent(w_hh, a.layout.batch, a.layout.size(), /*lstm_gates=*/true);
  const PackedStep* fused = recurrent.packed_lstm();
  if (fused != nullptr && !proj && a.layout.uniform && N > 0) {  // the whole sequence in one parallel region
    fused->lstm_sequence(gates, hx, cx, output, cells, reverse);
    const int64_t B = a.layout.batch, last = reverse ? 0 : N - B;
    return {shape_output(output, input, a.layout), output.narrow(0, last, B).clone(), cells.narrow(0, last, B).clone(),
            gates, cells, proj_in};
  }
  CarriedState h(hx), c(cx);
  const std::optional<StepGemm> projection =
      proj ? std::make_optional<StepGemm>(*w_hr, a.layout.batch, a.layout.size()) : std::nullopt;
  for (size_t i = 0; i < a.layout.size(); ++i) {
    const Step s = a.layout.at(i, reverse);
    Tensor h_out = rows(output, s), c_new = rows(cells, s);
    const Tensor c_prev = c.enter(s.batch);
    Tensor r = proj ? rows(proj_in, s) : h_out;
    if (fused != nullptr)
      fused->lstm_step(rows(gates, s), h.enter(s.batch), c_prev, c_new, r);
    else
      lstm_forward_pointwise(rows(gates, s), recurrent(h.enter(s.batch)), c_prev, c_new, r);
    if (proj) h_out.copy_((*projection)(r));
    h.leave(h_out);
    c.leave(c_new);
  }
  return {shape_output(output, input, a.layout), h.finish(), c.finish(), gates, cells, proj_in};
}

// -> grad_input, grad_hx, grad_cx, grad_w_ih, grad_w_hh, grad_bias [4H] (for b_ih and b_hh alike), grad_w_hr
Tensor7 lstm_layer_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
                            const Tensor& input, const OptTensor& batch_sizes, const Tensor& hx, const Tensor& cx,
                            const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr, bool reverse,
                            const Tensor& output, const Tensor& gates_saved, const Tensor& cells_saved,
                            const Tensor& proj_in_saved, bool input_grad) {
  const char* op = "lstm_layer_backward";
  // A backward records no graph (double backward differentiates the reference), and add_out below refuses
  // operands that require grad: called directly on such tensors the op must still run.
  at::NoGradGuard no_grad;
  auto a = check_layer(op, 4, input, batch_sizes, hx, w_ih, w_hh, std::nullopt, std::nullopt, w_hr);
  const int64_t H = a.H, N = a.layout.rows, P = hx.size(1);
  const bool proj = w_hr.has_value();
  check_state(op, input, cx, {a.layout.batch, H}, "cx");
  check_state(op, input, grad_h_n, {a.layout.batch, P}, "grad_h_n");
  check_state(op, input, grad_c_n, {a.layout.batch, H}, "grad_c_n");
  check_state(op, input, gates_saved, {N, 4 * H}, "gates");
  check_state(op, input, cells_saved, {N, H}, "cells");
  check_state(op, input, proj_in_saved, {proj ? N : 0, H}, "proj_in");
  // The kernels index rows by stride(0) and assume unit column stride: free when already contiguous. After the
  // checks, so a malformed stride-0 argument is refused rather than first copied out in full.
  const Tensor gates = gates_saved.contiguous(), cells = cells_saved.contiguous();
  const Tensor proj_in = proj_in_saved.contiguous();
  c10::OptionalDeviceGuard guard(input.device());
  const Tensor grad_out = flat_rows(op, grad_output, input, a.layout, P, "grad_output");
  const Tensor out2d = flat_rows(op, output, input, a.layout, P, "output");
  const PreviousRows c_prev(a.layout, cells, cx.contiguous(), reverse);
  Tensor grad_gates = at::empty({N, 4 * H}, input.options());
  CarriedState dh(grad_h_n);
  Tensor dc = grad_c_n.contiguous().clone();  // updated in place, step by step
  Tensor grad_h_all = at::empty({proj ? N : 0, P}, input.options());  // dL/dh per step, for grad_w_hr
  // Transposed weights: dh = dgates @ W_hh is the step product with W_hh^T; dr = dh @ W_hr likewise.
  const StepGemm recurrent_t(w_hh.t(), a.layout.batch, a.layout.size());
  const std::optional<StepGemm> projection_t =
      proj ? std::make_optional<StepGemm>(w_hr->t(), a.layout.batch, a.layout.size()) : std::nullopt;
  Tensor grad_hx;
  const PackedStep* packed = recurrent_t.packed_plain();
  if (packed != nullptr && !proj && a.layout.uniform && N > 0) {  // the whole recurrence in one parallel region
    grad_hx = grad_h_n.contiguous().clone();
    packed->lstm_backward_sequence(gates, cells, cx.contiguous(), grad_out, grad_hx, dc, grad_gates, reverse);
  } else {
    for (size_t i = a.layout.size(); i-- > 0;) {
      const Step s = a.layout.at(i, reverse);
      Tensor dg = rows(grad_gates, s);
      const Tensor dh_later = dh.enter(s.batch), dc_s = active(dc, s);
      if (proj) {  // the projection's GEMM needs the whole dL/dh first
        Tensor dh_s = rows(grad_h_all, s);
        at::add_out(dh_s, dh_later, rows(grad_out, s));
        lstm_backward_pointwise(rows(gates, s), c_prev.at(i), rows(cells, s), (*projection_t)(dh_s), Tensor(),
                                dc_s, dg);
      } else {
        lstm_backward_pointwise(rows(gates, s), c_prev.at(i), rows(cells, s), dh_later, rows(grad_out, s), dc_s,
                                dg);
      }
      dh.leave(recurrent_t(dg));
    }
    grad_hx = dh.finish();
  }
  Tensor grad_input = input_grad_or_empty(input_grad, grad_gates, w_ih, input);
  Tensor grad_w_hr = proj ? weight_grad(grad_h_all, proj_in) : at::empty({0}, input.options());
  Tensor grad_w_hh = recurrent_weight_grad(a.layout, grad_gates, out2d, hx.contiguous(), reverse);
  return {grad_input, grad_hx, dc, weight_grad(grad_gates, a.input2d), grad_w_hh, bias_grad(grad_gates),
          grad_w_hr};
}

// input: [T, B, I] or packed [N, I]; hx: [B, H]; w_ih: [3H, I]; w_hh: [3H, H]
// -> output [T, B, H] / [N, H]; h_n [B, H]; saved: gates [N, 3H] activations (r, z, n); hn [N, H] W_hn h + b_hn
Tensor4 gru_layer_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
                          const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, bool reverse) {
  auto a = check_layer("gru_layer", 3, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  const int64_t H = a.H, N = a.layout.rows;
  c10::OptionalDeviceGuard guard(input.device());
  Tensor gates = project(a.input2d, w_ih, b_ih);
  Tensor output = at::empty({N, H}, input.options());
  Tensor hn = at::empty({N, H}, input.options());
  CarriedState h(hx);
  const StepGemm recurrent(w_hh, a.layout.batch, a.layout.size());
  for (size_t i = 0; i < a.layout.size(); ++i) {
    const Step s = a.layout.at(i, reverse);
    const Tensor h_prev = h.enter(s.batch), h_out = rows(output, s);
    const Tensor gh = recurrent(h_prev, b_hh);  // W_hh h + b_hh, kept apart: r multiplies its n part
    gru_forward_pointwise(rows(gates, s), gh, h_prev, h_out, rows(hn, s));
    h.leave(h_out);
  }
  return {shape_output(output, input, a.layout), h.finish(), gates, hn};
}

// -> grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih [3H], grad_b_hh [3H]
Tensor6 gru_layer_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                           const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                           bool reverse, const Tensor& output, const Tensor& gates_saved,
                           const Tensor& hn_saved, bool input_grad) {
  const char* op = "gru_layer_backward";
  auto a = check_layer(op, 3, input, batch_sizes, hx, w_ih, w_hh, std::nullopt, std::nullopt, std::nullopt);
  const int64_t H = a.H, N = a.layout.rows;
  check_state(op, input, grad_h_n, {a.layout.batch, H}, "grad_h_n");
  check_state(op, input, gates_saved, {N, 3 * H}, "gates");
  check_state(op, input, hn_saved, {N, H}, "hn");
  const Tensor gates = gates_saved.contiguous(), hn = hn_saved.contiguous();  // checked first, as in the LSTM's
  c10::OptionalDeviceGuard guard(input.device());
  const Tensor grad_out = flat_rows(op, grad_output, input, a.layout, H, "grad_output");
  const Tensor out2d = flat_rows(op, output, input, a.layout, H, "output");
  const PreviousRows h_prev(a.layout, out2d, hx.contiguous(), reverse);
  Tensor grad_gx = at::empty({N, 3 * H}, input.options());
  Tensor grad_gh = at::empty({N, 3 * H}, input.options());
  Tensor dh = grad_h_n.contiguous().clone();
  const StepGemm recurrent_t(w_hh.t(), a.layout.batch, a.layout.size());
  for (size_t i = a.layout.size(); i-- > 0;) {
    const Step s = a.layout.at(i, reverse);
    Tensor dh_s = active(dh, s), dgh = rows(grad_gh, s);
    dh_s.add_(rows(grad_out, s));
    gru_backward_pointwise(rows(gates, s), rows(hn, s), h_prev.at(i), dh_s, rows(grad_gx, s), dgh);
    dh_s.add_(recurrent_t(dgh));
  }
  Tensor grad_w_hh = recurrent_weight_grad(a.layout, grad_gh, out2d, hx.contiguous(), reverse);
  return {input_grad_or_empty(input_grad, grad_gx, w_ih, input), dh, weight_grad(grad_gx, a.input2d), grad_w_hh,
          bias_grad(grad_gx), bias_grad(grad_gh)};
}

// input: [T, B, I] or packed [N, I]; hx: [B, H]; w_ih: [H, I]; w_hh: [H, H]
// -> output [T, B, H] / [N, H] (also all the backward needs); h_n [B, H]
Tensor2 rnn_layer_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
                          const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, bool reverse,
                          bool relu) {
  auto a = check_layer("rnn_layer", 1, input, batch_sizes, hx, w_ih, w_hh, b_ih, b_hh, std::nullopt);
  c10::OptionalDeviceGuard guard(input.device());
  Tensor output = project(a.input2d, w_ih, b_ih, b_hh);  // activated in place, step by step
  CarriedState h(hx);
  const StepGemm recurrent(w_hh, a.layout.batch, a.layout.size());
  for (size_t i = 0; i < a.layout.size(); ++i) {
    const Step s = a.layout.at(i, reverse);
    const Tensor pre = rows(output, s);
    rnn_forward_pointwise(pre, recurrent(h.enter(s.batch)), pre, relu);
    h.leave(pre);
  }
  return {shape_output(output, input, a.layout), h.finish()};
}

// -> grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_bias [H]
Tensor5 rnn_layer_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                           const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                           bool reverse, bool relu, const Tensor& output, bool input_grad) {
  const char* op = "rnn_layer_backward";
  auto a = check_layer(op, 1, input, batch_sizes, hx, w_ih, w_hh, std::nullopt, std::nullopt, std::nullopt);
  const int64_t H = a.H, N = a.layout.rows;
  check_state(op, input, grad_h_n, {a.layout.batch, H}, "grad_h_n");
  c10::OptionalDeviceGuard guard(input.device());
  const Tensor grad_out = flat_rows(op, grad_output, input, a.layout, H, "grad_output");
  const Tensor out2d = flat_rows(op, output, input, a.layout, H, "output");
  Tensor grad_pre = at::empty({N, H}, input.options());
  CarriedState dh(grad_h_n);
  const StepGemm recurrent_t(w_hh.t(), a.layout.batch, a.layout.size());
  for (size_t i = a.layout.size(); i-- > 0;) {
    const Step s = a.layout.at(i, reverse);
    const Tensor dp = rows(grad_pre, s);
    rnn_backward_pointwise(rows(out2d, s), dh.enter(s.batch), rows(grad_out, s), dp, relu);
    dh.leave(recurrent_t(dp));
  }
  Tensor grad_w_hh = recurrent_weight_grad(a.layout, grad_pre, out2d, hx.contiguous(), reverse);
  return {input_grad_or_empty(input_grad, grad_pre, w_ih, input), dh.finish(), weight_grad(grad_pre, a.input2d),
          grad_w_hh, bias_grad(grad_pre)};
}

}  // namespace seqops
