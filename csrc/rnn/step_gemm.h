// The per-step GEMM of a recurrence: the same weight multiplies a small batch of states T times.
//
// On the CPU (float32/bfloat16) the weight is reordered once into oneDNN's blocked layout (onednn_linear.h),
// so no step repacks it: measured ~2x faster per step than at::mm, and ~1.5x faster than oneDNN on the plain
// weight, at [32, 256] x [256, 1024] on an AMD EPYC. Elsewhere (CUDA: cuBLAS; float64; no oneDNN) it is at::mm.
// SEQOPS_ONEDNN=0 forces at::mm (and so does the default for float32 on CPUs without AVX-512: onednn_linear.h).
// A CPU float32 step of at most 512 rows runs on PackedStep instead (any weight size: the panels are padded),
// with no per-call setup: measured on the LSTM layer's forward, 100 -> 35-50 us per step at B=16, H=128 and
// 60 -> 25-35 us at B=1, H=256; on par with oneDNN at B=32, H=256 (2-core AMD EPYC).
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "rnn/onednn_linear.h"
#include "rnn/packed_step.h"

namespace seqops {

using at::Tensor;

class StepGemm {
 public:
  // weight: [G, P]; the product is h [b, P] -> [b, G] = h W^T (+ bias [G]). batch_hint: the largest b;
  // steps: how many products the weight takes. lstm_gates: G = 4H is an LSTM's gates, and packed_lstm() may
  // then run the whole fused step.
  StepGemm(const Tensor& weight, int64_t batch_hint, size_t steps, bool lstm_gates = false) : weight_(weight) {
    // One product cannot repay a repack of the weight (a read and a write of all of it, more than the product
    // reads): a T=1 layer call, as in token-by-token decoding, is at::mm. Measured at B=1, H=1024, GRU T=1
    // (2-core AMD EPYC): inference 3.8 -> 1.5 ms, training 20.7 -> 5.5 ms.
    if (steps < 2) return;
    if (PackedStep::supported(weight, batch_hint, lstm_gates)) {
      packed_step_.emplace(weight, lstm_gates);
      lstm_gates_ = lstm_gates;
      return;
    }
    if (onednn::usable(weight) && onednn::worth_it(batch_hint, weight))
      packed_ = onednn::reorder(weight, batch_hint);
  }

  // h: [b, P] -> [b, G], a new tensor
  Tensor operator()(const Tensor& h, const std::optional<Tensor>& bias = std::nullopt) const {
    if (packed_step_) return (*packed_step_)(h, bias);
    if (packed_.defined() && onednn::worth_it(h.size(0), weight_)) return onednn::linear(h, packed_, bias);
    return bias.has_value() ? at::addmm(*bias, h, weight_.t()) : at::mm(h, weight_.t());
  }

  // The fused LSTM step where this weight is an LSTM's W_hh packed for it, else null.
  const PackedStep* packed_lstm() const { return lstm_gates_ && packed_step_ ? &*packed_step_ : nullptr; }
  // The packed weight of a plain product, else null.
  const PackedStep* packed_plain() const { return !lstm_gates_ && packed_step_ ? &*packed_step_ : nullptr; }

 private:
  Tensor weight_;
  Tensor packed_;                          // oneDNN's blocked copy of weight_
  std::optional<PackedStep> packed_step_;  // or seqops' own panels
  bool lstm_gates_ = false;
};

}  // namespace seqops
