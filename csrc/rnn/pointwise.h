// The fused pointwise step of each recurrent cell: everything between the two GEMMs of a timestep.
// One declaration per kernel, a CPU and a CUDA implementation each; the inline wrappers route by device
// so the drivers (cell_ops.cpp, layer_ops.cpp) are written once for every device.
//
// All tensors are 2-D, row-contiguous views (a row range of a larger buffer is fine): rows = active batch.
// An optional input is passed as an undefined Tensor.
// Math runs in float for fp16/bf16/fp32 storage and in double for float64.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace seqops {

using at::Tensor;

#define SEQOPS_DECLARE_ON_DEVICES(ret, name, ...) \
  ret name##_cpu(__VA_ARGS__);                    \
  ret name##_cuda(__VA_ARGS__);

// LSTM forward.
// gates:   [B, 4H] order (i, f, g, o); in: W_ih x + both biases; out: activations (saved)
// gates_h: [B, 4H] W_hh h, added to gates before the activations (the layer's step GEMM result, so no
//          separate add pass); undefined: gates already hold the whole pre-activation
// c_prev:  [B, H];  c_new, h_new: [B, H] out, c_new = f*c_prev + i*g, h_new = o*tanh(c_new)
SEQOPS_DECLARE_ON_DEVICES(void, lstm_forward_pointwise, const Tensor& gates, const Tensor& gates_h,
                          const Tensor& c_prev, const Tensor& c_new, const Tensor& h_new)

// LSTM backward.
// gates: [B, 4H] activations; c_prev, c_new: [B, H]
// grad_h: [B, H] dL/dh_new; grad_h_out: [B, H] a second part of it (the output's gradient, summed here
//         rather than in a separate pass), or undefined
// grad_c: [B, H] in: dL/dc_new from later steps, out: dL/dc_prev (in place)
// grad_gates: [B, 4H] out: dL/d(pre-activations), order (i, f, g, o)
SEQOPS_DECLARE_ON_DEVICES(void, lstm_backward_pointwise, const Tensor& gates, const Tensor& c_prev,
                          const Tensor& c_new, const Tensor& grad_h, const Tensor& grad_h_out,
                          const Tensor& grad_c, const Tensor& grad_gates)

// GRU forward.
// gates_x: [B, 3H] order (r, z, n); in: W_ih x + b_ih, out: activations r, z, n (saved)
// gates_h: [B, 3H] in: W_hh h + b_hh (the n part is what r multiplies: torch.nn's convention)
// h_prev: [B, H]; h_new: [B, H] out = (1-z)*n + z*h_prev; hn_saved: [B, H] out = (W_hn h + b_hn), saved
SEQOPS_DECLARE_ON_DEVICES(void, gru_forward_pointwise, const Tensor& gates_x, const Tensor& gates_h,
                          const Tensor& h_prev, const Tensor& h_new, const Tensor& hn_saved)

// GRU backward.
// gates: [B, 3H] activations (r, z, n); hn: [B, H] saved W_hn h + b_hn; h_prev: [B, H]
// grad_h: [B, H] in: dL/dh_new, out: the direct part of dL/dh_prev, z*dL/dh_new (in place; the caller adds
//         grad_gates_h @ W_hh)
// grad_gates_x: [B, 3H] out, dL/d(W_ih x + b_ih); grad_gates_h: [B, 3H] out, dL/d(W_hh h + b_hh)
SEQOPS_DECLARE_ON_DEVICES(void, gru_backward_pointwise, const Tensor& gates, const Tensor& hn,
                          const Tensor& h_prev, const Tensor& grad_h, const Tensor& grad_gates_x,
                          const Tensor& grad_gates_h)

// Vanilla RNN forward. pre: [B, H] W_ih x + b_ih + b_hh; pre_h: [B, H] W_hh h, or undefined (pre holds it
// all); h_new: [B, H] out = act(pre + pre_h), may alias pre
SEQOPS_DECLARE_ON_DEVICES(void, rnn_forward_pointwise, const Tensor& pre, const Tensor& pre_h, const Tensor& h_new,
                          bool relu)

// Vanilla RNN backward. h_new: [B, H]; grad_h: [B, H] dL/dh_new; grad_h_out: [B, H] a second part of it, or
// undefined; grad_pre: [B, H] out (may alias grad_h)
SEQOPS_DECLARE_ON_DEVICES(void, rnn_backward_pointwise, const Tensor& h_new, const Tensor& grad_h,
                          const Tensor& grad_h_out, const Tensor& grad_pre, bool relu)

#undef SEQOPS_DECLARE_ON_DEVICES

#ifdef SEQOPS_WITH_CUDA
#define SEQOPS_ROUTE(name, first, ...) \
  do {                                 \
    if (first.is_cuda())               \
      name##_cuda(__VA_ARGS__);        \
    else                               \
      name##_cpu(__VA_ARGS__);         \
  } while (0)
#else
#define SEQOPS_ROUTE(name, first, ...)                                                           \
  do {                                                                                           \
    TORCH_CHECK(!first.is_cuda(), "seqops was built without CUDA kernels; rebuild with a CUDA " \
                                  "toolkit (SEQOPS_CUDA=1) to use CUDA tensors");              \
    name##_cpu(__VA_ARGS__);                                                                     \
  } while (0)
#endif

inline void lstm_forward_pointwise(const Tensor& gates, const Tensor& gates_h, const Tensor& c_prev,
                                   const Tensor& c_new, const Tensor& h_new) {
  SEQOPS_ROUTE(lstm_forward_pointwise, gates, gates, gates_h, c_prev, c_new, h_new);
}
inline void lstm_backward_pointwise(const Tensor& gates, const Tensor& c_prev, const Tensor& c_new,
                                    const Tensor& grad_h, const Tensor& grad_h_out, const Tensor& grad_c,
                                    const Tensor& grad_gates) {
  SEQOPS_ROUTE(lstm_backward_pointwise, gates, gates, c_prev, c_new, grad_h, grad_h_out, grad_c, grad_gates);
}
inline void gru_forward_pointwise(const Tensor& gates_x, const Tensor& gates_h, const Tensor& h_prev,
                                  const Tensor& h_new, const Tensor& hn_saved) {
  SEQOPS_ROUTE(gru_forward_pointwise, gates_x, gates_x, gates_h, h_prev, h_new, hn_saved);
}
inline void gru_backward_pointwise(const Tensor& gates, const Tensor& hn, const Tensor& h_prev,
                                   const Tensor& grad_h, const Tensor& grad_gates_x, const Tensor& grad_gates_h) {
  SEQOPS_ROUTE(gru_backward_pointwise, gates, gates, hn, h_prev, grad_h, grad_gates_x, grad_gates_h);
}
inline void rnn_forward_pointwise(const Tensor& pre, const Tensor& pre_h, const Tensor& h_new, bool relu) {
  SEQOPS_ROUTE(rnn_forward_pointwise, pre, pre, pre_h, h_new, relu);
}
inline void rnn_backward_pointwise(const Tensor& h_new, const Tensor& grad_h, const Tensor& grad_h_out,
                                   const Tensor& grad_pre, bool relu) {
  SEQOPS_ROUTE(rnn_backward_pointwise, h_new, h_new, grad_h, grad_h_out, grad_pre, relu);
}

#undef SEQOPS_ROUTE

}  // namespace seqops
