// The per-step GEMM of a recurrence: the same weight multiplies a small batch of states T times.
//
// On the CPU (float32/bfloat16) the weight is reordered once into oneDNN's blocked layout through ATen's
// mkldnn ops (what torch's own fused CPU RNN runs on), so no step repacks it: measured ~30% faster per step
// than at::mm at [32, 256] x [256, 1024] on an AMD EPYC, where MKL's sgemm takes a generic path. Elsewhere
// (CUDA: cuBLAS; float64; no oneDNN) it is at::mm. SEQOPS_ONEDNN=0 forces at::mm.
// A CPU float32 step whose weight fits PackedStep's panels (every common size) runs on PackedStep instead,
// with no per-call setup: measured on the LSTM layer's forward, 100 -> 35-50 us per step at B=16, H=128 and
// 60 -> 25-35 us at B=1, H=256; on par with oneDNN at B=32, H=256 (2-core AMD EPYC).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <cstring>
#include <optional>

#include "rnn/packed_step.h"

namespace seqops {

using at::Tensor;

class StepGemm {
 public:
  // weight: [G, P]; the product is h [b, P] -> [b, G] = h W^T (+ bias [G]). batch_hint: the largest b.
  // lstm_gates: G = 4H is an LSTM's gates, and packed_lstm() may then run the whole fused step.
  StepGemm(const Tensor& weight, int64_t batch_hint, bool lstm_gates = false) : weight_(weight) {
    if (PackedStep::supported(weight, batch_hint, lstm_gates)) {
      packed_step_.emplace(weight, lstm_gates);
      lstm_gates_ = lstm_gates;
      return;
    }
    if (onednn_ops() != nullptr && usable(weight) && worth_it(batch_hint)) {
      torch::jit::Stack stack{weight.contiguous(), c10::IValue(std::max<int64_t>(batch_hint, 1))};
      onednn_ops()->reorder.callBoxed(&stack);
      packed_ = stack[0].toTensor();
    }
  }

  // h: [b, P] -> [b, G], a new tensor
  Tensor operator()(const Tensor& h, const std::optional<Tensor>& bias = std::nullopt) const {
    if (packed_step_) return (*packed_step_)(h, bias);
    if (packed_.defined() && worth_it(h.size(0))) {
      torch::jit::Stack stack{h.contiguous(), packed_, bias.has_value() ? c10::IValue(*bias) : c10::IValue(),
                              c10::IValue("none"), c10::IValue(c10::List<std::optional<at::Scalar>>()),
                              c10::IValue()};
      onednn_ops()->linear.callBoxed(&stack);
      return stack[0].toTensor();
    }
    return bias.has_value() ? at::addmm(*bias, h, weight_.t()) : at::mm(h, weight_.t());
  }

  // The fused LSTM step where this weight is an LSTM's W_hh packed for it, else null.
  const PackedStep* packed_lstm() const { return lstm_gates_ && packed_step_ ? &*packed_step_ : nullptr; }
  // The packed weight of a plain product, else null.
  const PackedStep* packed_plain() const { return !lstm_gates_ && packed_step_ ? &*packed_step_ : nullptr; }

 private:
  // oneDNN's call costs ~20 us however small the product; at::mm wins below ~1M multiply-adds (measured:
  // [16, 64] x [64, 256] 10 us vs 25 us; [4, 256] x [256, 1024] 56 us vs 41 us, one thread).
  bool worth_it(int64_t rows) const {
    constexpr int64_t kMinMacs = int64_t{1} << 20;
    return rows > 0 && rows * weight_.size(0) * weight_.size(1) >= kMinMacs;
  }

  struct OneDnnOps {
    c10::OperatorHandle reorder, linear;
  };

  // ATen's internal mkldnn ops, looked up once; null where this torch has none.
  static const OneDnnOps* onednn_ops() {
    static const std::optional<OneDnnOps> ops = []() -> std::optional<OneDnnOps> {
      const char* env = std::getenv("SEQOPS_ONEDNN");
      if ((env != nullptr && std::strcmp(env, "0") == 0) || !at::hasMKLDNN()) return std::nullopt;
      auto& dispatcher = c10::Dispatcher::singleton();
      auto reorder = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
      auto linear = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
      if (!reorder || !linear) return std::nullopt;
      return OneDnnOps{*reorder, *linear};
    }();
    return ops ? &*ops : nullptr;
  }

  static bool usable(const Tensor& w) {
    const auto st = w.scalar_type();
    return w.device().is_cpu() && (st == at::kFloat || st == at::kBFloat16) &&
           at::globalContext().userEnabledMkldnn() && w.numel() > 0;
  }

  Tensor weight_;
  Tensor packed_;                          // oneDNN's blocked copy of weight_
  std::optional<PackedStep> packed_step_;  // or seqops' own panels
  bool lstm_gates_ = false;
};

}  // namespace seqops
