// Binds every recurrent op to one dispatch key; included by the CPU and CUDA registration files, whose
// only difference is the key (the op functions route their pointwise kernels by device themselves).
#pragma once

#include <torch/library.h>

#include "rnn/ops.h"

namespace seqops {

inline void register_recurrent_ops(torch::Library& m) {
  m.impl("lstm_cell_forward", &lstm_cell_forward);
  m.impl("lstm_cell_backward", &lstm_cell_backward);
  m.impl("gru_cell_forward", &gru_cell_forward);
  m.impl("gru_cell_backward", &gru_cell_backward);
  m.impl("rnn_cell_forward", &rnn_cell_forward);
  m.impl("rnn_cell_backward", &rnn_cell_backward);
  m.impl("lstm_layer_forward", &lstm_layer_forward);
  m.impl("lstm_layer_backward", &lstm_layer_backward);
  m.impl("gru_layer_forward", &gru_layer_forward);
  m.impl("gru_layer_backward", &gru_layer_backward);
  m.impl("rnn_layer_forward", &rnn_layer_forward);
  m.impl("rnn_layer_backward", &rnn_layer_backward);
}

}  // namespace seqops
