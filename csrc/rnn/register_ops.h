// Binds every recurrent op to one dispatch key; included by the CPU and CUDA registration files, whose
// only difference is the key (the op functions route their pointwise kernels by device themselves).
#pragma once

#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "rnn/ops.h"

namespace seqops {

// The ops choose their own precision, so the ATen ops they call must not be recast by an autocast region
// their caller runs in: a backward run inside `with torch.autocast(...)` would otherwise get its fp32 GEMMs
// cast to bf16 (or a mix of dtypes, which ATen refuses).
template <auto fn>
struct WithoutAutocast;
template <typename Ret, typename... Args, Ret (*fn)(Args...)>
struct WithoutAutocast<fn> {
  static Ret call(Args... args) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    return fn(args...);
  }
};

inline void register_recurrent_ops(torch::Library& m) {
  m.impl("lstm_cell_forward", &WithoutAutocast<&lstm_cell_forward>::call);
  m.impl("lstm_cell_backward", &WithoutAutocast<&lstm_cell_backward>::call);
  m.impl("gru_cell_forward", &WithoutAutocast<&gru_cell_forward>::call);
  m.impl("gru_cell_backward", &WithoutAutocast<&gru_cell_backward>::call);
  m.impl("rnn_cell_forward", &WithoutAutocast<&rnn_cell_forward>::call);
  m.impl("rnn_cell_backward", &WithoutAutocast<&rnn_cell_backward>::call);
  m.impl("lstm_layer_forward", &WithoutAutocast<&lstm_layer_forward>::call);
  m.impl("lstm_layer_backward", &WithoutAutocast<&lstm_layer_backward>::call);
  m.impl("gru_layer_forward", &WithoutAutocast<&gru_layer_forward>::call);
  m.impl("gru_layer_backward", &WithoutAutocast<&gru_layer_backward>::call);
  m.impl("rnn_layer_forward", &WithoutAutocast<&rnn_layer_forward>::call);
  m.impl("rnn_layer_backward", &WithoutAutocast<&rnn_layer_backward>::call);
}

}  // namespace seqops
