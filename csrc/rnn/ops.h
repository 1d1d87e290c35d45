// The op functions that csrc/*/register_*.cpp bind to the schemas of csrc/seqops.cpp. Device-generic:
// the same function serves the CPU and the CUDA dispatch key; only the pointwise kernels differ.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace seqops {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using Tensor2 = std::tuple<Tensor, Tensor>;
using Tensor3 = std::tuple<Tensor, Tensor, Tensor>;
using Tensor4 = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using Tensor5 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensor6 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;
using Tensor7 = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>;

// ---- cells (cell_ops.cpp) ----
Tensor3 lstm_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& cx, const Tensor& w_ih,
                          const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh);
Tensor6 lstm_cell_backward(const Tensor& grad_h1, const Tensor& grad_c1, const Tensor& input, const Tensor& hx,
                           const Tensor& cx, const Tensor& w_ih, const Tensor& w_hh, const Tensor& c1,
                           const Tensor& gates);
Tensor3 gru_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                         const OptTensor& b_ih, const OptTensor& b_hh);
Tensor6 gru_cell_backward(const Tensor& grad_h1, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                          const Tensor& w_hh, const Tensor& gates, const Tensor& hn);
Tensor rnn_cell_forward(const Tensor& input, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                        const OptTensor& b_ih, const OptTensor& b_hh, bool relu);
Tensor5 rnn_cell_backward(const Tensor& grad_h1, const Tensor& input, const Tensor& hx, const Tensor& w_ih,
                          const Tensor& w_hh, const Tensor& h1, bool relu);

// ---- whole-sequence layers, one direction (layer_ops.cpp) ----
Tensor6 lstm_layer_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& hx, const Tensor& cx,
                           const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                           const OptTensor& w_hr, bool reverse);
Tensor7 lstm_layer_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& grad_c_n,
                            const Tensor& input, const OptTensor& batch_sizes, const Tensor& hx, const Tensor& cx,
                            const Tensor& w_ih, const Tensor& w_hh, const OptTensor& w_hr, bool reverse,
                            const Tensor& output, const Tensor& gates, const Tensor& cells,
                            const Tensor& proj_in, bool input_grad);
Tensor4 gru_layer_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
                          const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, bool reverse);
Tensor6 gru_layer_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                           const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                           bool reverse, const Tensor& output, const Tensor& gates, const Tensor& hn,
                           bool input_grad);
Tensor2 rnn_layer_forward(const Tensor& input, const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih,
                          const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, bool reverse,
                          bool relu);
Tensor5 rnn_layer_backward(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input,
                           const OptTensor& batch_sizes, const Tensor& hx, const Tensor& w_ih, const Tensor& w_hh,
                           bool reverse, bool relu, const Tensor& output, bool input_grad);

}  // namespace seqops
