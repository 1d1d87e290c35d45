// Every seqops schema, in one place. Kernels are bound per device in cpu/register_cpu.cpp and
// cuda/register_cuda.cpp; fake (meta) kernels and autograd are registered from Python (seqops/ops/).
#include <Python.h>
#include <torch/library.h>

// `import seqops._C` loads this library, which runs the registrations below. No Python API of its own.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(seqops, m) {
  // One timestep. Forward ops also return what their backward needs (activated gates, ...).
  m.def("lstm_cell_forward(Tensor input, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh) -> (Tensor h1, Tensor c1, Tensor gates)");
  m.def("lstm_cell_backward(Tensor grad_h1, Tensor grad_c1, Tensor input, Tensor hx, Tensor cx, Tensor w_ih, "
        "Tensor w_hh, Tensor c1, Tensor gates) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_cell_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
        "-> (Tensor h1, Tensor gates, Tensor hn)");
  m.def("gru_cell_backward(Tensor grad_h1, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor gates, "
        "Tensor hn) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("rnn_cell_forward(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, "
        "bool relu) -> Tensor");
  m.def("rnn_cell_backward(Tensor grad_h1, Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor h1, "
        "bool relu) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // One layer, one direction, the whole sequence; batch_sizes (CPU int64) given for packed input.
  // Backward: input_grad=false skips the input-gradient GEMM (an empty tensor is returned in its place).
  m.def("lstm_layer_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, "
        "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, bool reverse) "
        "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor gates, Tensor cells, Tensor proj_in)");
  m.def("lstm_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor grad_c_n, Tensor input, "
        "Tensor? batch_sizes, Tensor hx, Tensor cx, Tensor w_ih, Tensor w_hh, Tensor? w_hr, bool reverse, "
        "Tensor output, Tensor gates, Tensor cells, Tensor proj_in, bool input_grad) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_layer_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, bool reverse) -> (Tensor output, Tensor h_n, Tensor gates, Tensor hn)");
  m.def("gru_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, "
        "Tensor hx, Tensor w_ih, Tensor w_hh, bool reverse, Tensor output, Tensor gates, Tensor hn, bool input_grad) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("rnn_layer_forward(Tensor input, Tensor? batch_sizes, Tensor hx, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, bool reverse, bool relu) -> (Tensor output, Tensor h_n)");
  m.def("rnn_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor? batch_sizes, "
        "Tensor hx, Tensor w_ih, Tensor w_hh, bool reverse, bool relu, Tensor output, bool input_grad) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
