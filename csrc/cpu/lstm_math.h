// The LSTM cell's pointwise math, once, for every CPU kernel that needs it (the generic pointwise kernels
// and the packed-panel step kernels). V is a scalar (float, double) or an at::vec::Vectorized lane.
#pragma once

#include "cpu/row_loop.h"

namespace seqops::cpu {

template <typename V>
struct LstmForward {
  V i, f, g, o, c, h;  // activations; c_new = f*c_prev + i*g; h_new = o*tanh(c_new)
};

// pre_*: pre-activations of the gates (i, f, g, o)
template <typename V>
inline LstmForward<V> lstm_forward_math(V pre_i, V pre_f, V pre_g, V pre_o, V c_prev) {
  const V i = sigmoid_(pre_i), f = sigmoid_(pre_f), g = tanh_(pre_g), o = sigmoid_(pre_o);
  const V c = f * c_prev + i * g;
  return {i, f, g, o, c, o * tanh_(c)};
}

template <typename V>
struct LstmBackward {
  V d_i, d_f, d_g, d_o;  // dL/d(pre-activations)
  V d_c_prev;            // dL/dc_prev
};

// i, f, g, o: activations; d_h: dL/dh_new (all of it); d_c: dL/dc_new from later steps
template <typename V>
inline LstmBackward<V> lstm_backward_math(V i, V f, V g, V o, V c_prev, V c_new, V d_h, V d_c) {
  const V tc = tanh_(c_new);
  const V dc = d_c + d_h * o * (V(1) - tc * tc);
  return {dc * g * i * (V(1) - i), dc * c_prev * f * (V(1) - f), dc * i * (V(1) - g * g), d_h * tc * o * (V(1) - o),
          dc * f};
}

}  // namespace seqops::cpu
