// oneDNN's linear, the GEMM torch's own fused CPU RNNs run on, reached through ATen's mkldnn ops by the
// dispatcher (oneDNN's own symbols are not exported by libtorch). CPU float32/bfloat16 only.
//
// Why not at::mm: MKL's sgemm takes its AVX2 path on AMD CPUs. Measured on a 2-core AMD EPYC with AVX-512:
// [3200, 1024] x [1024, 256] 11.7 ms with at::mm, 8.4 ms here; a step's [32, 256] x [256, 1024] 214 us vs
// 101 us on a reordered weight. Without AVX-512, AVX2 is MKL's own best path too, and at::mm won over whole
// layers (float32_on_onednn).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Version.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <cstring>
#include <optional>

namespace seqops::onednn {

using at::Tensor;

struct Ops {
  c10::OperatorHandle reorder, linear;
};

// Looked up once; null where this torch has no oneDNN.
inline const Ops* ops() {
  static const std::optional<Ops> found = []() -> std::optional<Ops> {
    if (!at::hasMKLDNN()) return std::nullopt;
    auto& dispatcher = c10::Dispatcher::singleton();
    auto reorder = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
    auto linear = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
    if (!reorder || !linear) return std::nullopt;
    return Ops{*reorder, *linear};
  }();
  return found ? &*found : nullptr;
}

// SEQOPS_ONEDNN: "0" keeps every product off oneDNN (false), "1" puts the float32 ones on it wherever it can
// take them (true); unset or anything else: nullopt. Read per call (a getenv is ~100 ns beside a product's
// >= 10 us), so tests can switch it.
inline std::optional<bool> forced() {
  const char* env = std::getenv("SEQOPS_ONEDNN");
  if (env == nullptr || (std::strcmp(env, "0") != 0 && std::strcmp(env, "1") != 0)) return std::nullopt;
  return env[0] == '1';
}

// Whether float32 products go to oneDNN rather than at::mm. By default where the CPU has AVX-512, on which
// MKL's AMD path (AVX2) loses (above). On x86 CPUs without it, AVX2 is MKL's best path, and at::mm measured
// faster over whole layers: training steps (fwd+bwd, B=16 T=64 H=256, 2-core Zen 2, against torch.nn side by
// side) LSTM 0.86 -> 0.95x, GRU 1.61 -> 1.81x, RNN 1.40 -> 1.70x; RNNCell at B=64 H=256 0.79 -> 0.96x.
// Elsewhere (ARM) oneDNN, as measured nowhere else.
inline bool float32_on_onednn() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool avx512 = at::get_cpu_capability().rfind("AVX512", 0) == 0;
  return forced().value_or(avx512);
#else
  return forced().value_or(true);
#endif
}

// Whether oneDNN can take this weight at all: CPU float32/bfloat16, mkldnn enabled, available, not
// SEQOPS_ONEDNN=0.
inline bool available(const Tensor& w) {
  const auto st = w.scalar_type();
  return ops() != nullptr && forced().value_or(true) && w.device().is_cpu() &&
         (st == at::kFloat || st == at::kBFloat16) && at::globalContext().userEnabledMkldnn() && w.numel() > 0;
}

// Whether oneDNN takes this weight's products: bfloat16, or float32 where float32_on_onednn.
inline bool usable(const Tensor& w) {
  return available(w) && (w.scalar_type() == at::kBFloat16 || float32_on_onednn());
}

// oneDNN's call costs ~20 us however small the product, so at::mm wins below ~1M multiply-adds (measured on a
// reordered weight: [16, 64] x [64, 256] 10 us vs 25 us; [4, 256] x [256, 1024] 56 us vs 41 us, one thread).
// A plain weight's product (used once) takes a larger minimum: gemm.h, onednn_takes.
inline bool worth_it(int64_t rows, const Tensor& w, int64_t min_macs = int64_t{1} << 20) {
  const int64_t macs_per_row = w.size(0) * w.size(1);  // a weight's numel: no overflow; rows * it could
  return rows > 0 && macs_per_row > 0 && rows >= (min_macs + macs_per_row - 1) / macs_per_row;
}

// weight [G, K] -> oneDNN's blocked layout for products of `batch` rows: pays off only when the weight is
// reused (a recurrence's steps); the reorder itself costs 150-300 us.
inline Tensor reorder(const Tensor& w, int64_t batch) {
  torch::jit::Stack stack{w.contiguous(), c10::IValue(std::max<int64_t>(batch, 1))};
  ops()->reorder.callBoxed(&stack);
  return stack[0].toTensor();
}

// x [N, K] -> [N, G] = x w^T (+ bias [G]); w: [G, K] reordered, contiguous, or the transpose of a contiguous
// [K, G] (oneDNN reads it strided: no copy).
inline Tensor linear(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias) {
  const bool plain = w.is_mkldnn() || w.is_contiguous() || w.t().is_contiguous();
  torch::jit::Stack stack{x.contiguous(), plain ? w : w.contiguous(),
                          bias.has_value() ? c10::IValue(bias->contiguous()) : c10::IValue(), c10::IValue("none"),
                          c10::IValue(c10::List<std::optional<at::Scalar>>()), c10::IValue()};
  ops()->linear.callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace seqops::onednn
