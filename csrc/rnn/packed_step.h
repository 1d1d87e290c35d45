// The CPU float32 step GEMM of a recurrence on a weight packed once per layer call into SIMD panels
// (cpu/packed_step.cpp), and the LSTM step fused with it.
//
// Why: a step multiplies a few rows (the batch) by the same weight T times. oneDNN's linear costs ~20-40 us of
// setup per call and MKL's small GEMMs run far below peak, which dominated small layers (B <= 16 or H <= 128:
// 0.4-0.6x torch.nn's fused oneDNN LSTM). Here a step is one parallel loop over weight panels, each thread
// keeping its panels in its own cache across steps, and the LSTM's gate math runs on the accumulators while
// they are still in registers.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace seqops {

using at::Tensor;

class PackedStep {
 public:
  // Whether weight [G, K] can be packed: CPU float32 (with lstm_gates, G = 4H), and rows (the step's batch)
  // small enough that a step GEMM is latency-bound. Any G: a last panel that the rows do not fill is padded
  // with zero rows, whose lanes are never stored. SEQOPS_PACKED_STEP=0 turns it off.
  static bool supported(const Tensor& weight, int64_t rows, bool lstm_gates);

  // weight: [G, K]. lstm_gates: panel j holds units [jW, jW + W) of each of the 4 gates (i, f, g, o), so a
  // panel's 4 accumulators are one unit block's gates; otherwise panel j holds columns [4jW, 4jW + 4W).
  PackedStep(const Tensor& weight, bool lstm_gates);

  // h: [b, K] -> [b, G] = h W^T (+ bias [G])
  Tensor operator()(const Tensor& h, const std::optional<Tensor>& bias = std::nullopt) const;

  // The whole LSTM step (lstm_gates packing): gates [b, 4H] in: W_ih x + b, out: activations (i, f, g, o);
  // adds h_prev [b, H'] W_hh^T; c_new = f*c_prev + i*g, h_new = o*tanh(c_new). All row-contiguous views.
  void lstm_step(const Tensor& gates, const Tensor& h_prev, const Tensor& c_prev, const Tensor& c_new,
                 const Tensor& h_new) const;

  // lstm_step over a whole unpacked sequence without projection, in one parallel region:
  // gates [T*B, 4H] step-major (in: W_ih x + b, out: activations); h0, c0 [B, H]; out, cells [T*B, H] out.
  // Step t reads h and c of step t-1 (t+1 with reverse) from out and cells.
  void lstm_sequence(const Tensor& gates, const Tensor& h0, const Tensor& c0, const Tensor& out,
                     const Tensor& cells, bool reverse) const;

  // The LSTM backward recurrence over a whole unpacked sequence without projection, in one parallel region;
  // this PackedStep holds W_hh^T [H, 4H] (plain packing). gates [T*B, 4H] activations; cells
  // [T*B, H]; c0 [B, H]; grad_out [T*B, H]; dh, dc [B, H] in: dL/dh_n, dL/dc_n, out: dL/dh0, dL/dc0;
  // grad_gates [T*B, 4H] out. All contiguous.
  void lstm_backward_sequence(const Tensor& gates, const Tensor& cells, const Tensor& c0, const Tensor& grad_out,
                              const Tensor& dh, const Tensor& dc, const Tensor& grad_gates, bool reverse) const;

 private:
  Tensor panels_;  // [ceil(G / 4W), K, 4, W]
  int64_t G_ = 0, K_ = 0;
  bool lstm_gates_ = false;
};

}  // namespace seqops
