// The GEMMs of the recurrent ops, all through ATen (cuBLAS on CUDA, the CPU BLAS / oneDNN on the CPU).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <optional>

#include "rnn/onednn_linear.h"

namespace seqops {

using at::Tensor;

// Whether a product x [N, K] w^T goes to oneDNN's linear: float32 only, as bfloat16's at::mm already runs on
// oneDNN, and its linear on the plain weight measured 3x at::mm's error on a cell's input gradient. on_any_cpu:
// also where float32 products otherwise prefer at::mm (onednn::float32_on_onednn). min_macs: by default 1M
// multiply-adds (onednn::worth_it), 4M for a weight under 2^17 elements. Measured in cells' training loops
// (2 threads, 2-core Zen 4): at::mm ran the products of a [512, 128] or [384, 128] weight faster at 32 rows
// (2.1M and 1.6M: LSTMCell and GRUCell ~1.1x over the whole loop) and the same at 64 rows; oneDNN ran a
// [1024, 256] weight's faster at 16 rows (4.2M: 1.1x), and a [3072, 1024] weight's at one row (a GRU's T=1
// step, 3.1M: 1.15x).
inline bool onednn_takes(const Tensor& x, const Tensor& w, bool on_any_cpu = false, int64_t min_macs = 0) {
  if (min_macs == 0) min_macs = w.numel() < (int64_t{1} << 17) ? int64_t{1} << 22 : int64_t{1} << 20;
  return w.scalar_type() == at::kFloat && (on_any_cpu ? onednn::available(w) : onednn::usable(w)) &&
         onednn::worth_it(x.size(0), w, min_macs);
}

// x [N, K] -> [N, G] = x w^T (+ bias [G]), for a weight used once. w: [G, K], or a transposed view (the
// input gradient's dgates @ W is linear_once(dgates, W.t())). On the CPU through oneDNN on the plain weight:
// reordering it first costs 150-300 us, more than the reordered GEMM gains in one product (measured at N = 64
// to 3200 rows, 2-core AMD EPYC).
inline Tensor linear_once(const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias = std::nullopt) {
  if (onednn_takes(x, w)) return onednn::linear(x, w, bias);
  return bias.has_value() ? at::addmm(*bias, x, w.t()) : at::mm(x, w.t());
}

// part(start, n) for n = chunk-sized pieces of [0, total), summed in place into the first: products split along
// their reduction dim, whose partial results are added.
template <class Part>
Tensor sum_of_parts(int64_t total, int64_t chunk, const Part& part) {
  Tensor sum = part(0, std::min(chunk, total));
  for (int64_t start = chunk; start < total; start += chunk) sum.add_(part(start, std::min(chunk, total - start)));
  return sum;
}

// The gradient that flows back through a weight: grad [N, G], w [G, K] -> [N, K] = grad w (the input gradient,
// a cell's hidden-state gradient). On oneDNN (linear_once's rule) the G products are summed 256 at a time and
// the partial results added: one oneDNN product sums all G in one chain, which at G = 4H = 1024 measured ~2.2x
// MKL's error (4.3e-8 vs 1.9e-8; an LSTM's input gradient 2.1x torch.nn's); per 256 it is MKL's (2.4e-8), for
// 5.5 ms instead of 4.3 at N = 3200 (MKL: 9.5 ms; that was Zen 5: on Zen 4, at::mm 10.2 ms, per 256 10.5 ms).
// Under 1024 rows (a cell's batch, a short sequence) it is at::mm: there oneDNN's calls and the column-block
// copies cost more than they gain, at::mm measured 2-3x faster at N = 16-256 and 0.98-1.15x at 512 (G =
// 512-2048, 2-core Zen 4), and an LSTMCell's training loop at B=32 H=128 went from 0.76x to 1.03-1.05x
// torch.nn's speed.
inline Tensor grad_through_weight(const Tensor& grad, const Tensor& w) {
  constexpr int64_t kTermsPerProduct = 256, kMinRows = 1024;
  const int64_t G = grad.size(1);
  if (grad.size(0) < kMinRows) return at::mm(grad, w);
  // Copying the [N, 256] column blocks costs what a product of K < 64 columns does: one product then.
  if (G <= kTermsPerProduct || w.size(1) < 64 || !onednn_takes(grad, w.t())) return linear_once(grad, w.t());
  return sum_of_parts(G, kTermsPerProduct, [&](int64_t start, int64_t terms) {  // [N, K]
    return onednn::linear(grad.narrow(1, start, terms).contiguous(), w.narrow(0, start, terms).t(), std::nullopt);
  });
}

// A weight's gradient over all rows: grad [N, G], x [N, K] -> [G, K] = grad^T x, contiguous. CPU float32 on
// oneDNN's linear, x^T (copied) times grad^T (read in place), 256 rows at a time with the partial products
// added: measured 1.5x faster than at::mm (MKL's AMD path) at N = 3200, G = 1024, K = 256 (5.6 vs 8.8 ms, 2-core
// AMD EPYC Zen 5), where the weight gradients had become the largest part of an LSTM's backward. In one call
// oneDNN sums all N products in one chain and its error is ~3x MKL's; summed per 256 rows it is MKL's (9.7e-5
// vs 8.1e-5 against float64 at that size). Elsewhere at::mm.
// Where it pays (measured, same machine): weights of 2^16 to 2^20 elements over at least 128 rows. Smaller weights
// ([256, 64]: 0.27 vs 0.22 ms at 1024 rows) and fewer rows (32 x [1024, 256]: 0.23 vs 0.16 ms) lose to oneDNN's
// per-call cost; larger ones ([2048, 512]) break even, the partial sums' adds growing with them.
inline bool weight_grad_on_onednn(const Tensor& grad, const Tensor& x) {
  const int64_t weight = grad.size(1) * x.size(1);
  return grad.scalar_type() == at::kFloat && onednn::usable(x) && grad.is_contiguous() && grad.size(0) >= 128 &&
         weight >= (int64_t{1} << 16) && weight <= (int64_t{1} << 20);
}

// A weight gradient under 16 rows or columns ([4H, P] and [P, H] of an LSTM with a small proj_size, [G, I] of a
// narrow input) on the CPU: MKL's product for such a narrow output sums all N rows in one chain. At N = 1320,
// [128, 8] measured 1.3e-6 against float64, 5x torch.nn's per-step sums; in blocks of 64 rows through one
// batched product, the blocks summed by at::sum (pairwise), 1.8e-7 (2-core AMD EPYC Zen 4; 0.16 -> 0.22 ms).
inline bool weight_grad_in_blocks(const Tensor& grad, const Tensor& x, int64_t rows_per_block) {
  return grad.is_cpu() && grad.scalar_type() == at::kFloat && std::min(grad.size(1), x.size(1)) < 16 &&
         grad.size(0) >= 2 * rows_per_block;
}

// a [N, M], b [N, K] -> [M, K] = a^T b, in blocks of rows_per_block rows summed pairwise (the tail added last)
inline Tensor transposed_product_by_blocks(const Tensor& a, const Tensor& b, int64_t rows_per_block) {
  const int64_t N = a.size(0), blocks = N / rows_per_block, main = blocks * rows_per_block;
  Tensor sum = at::bmm(a.narrow(0, 0, main).reshape({blocks, rows_per_block, a.size(1)}).transpose(1, 2),
                       b.narrow(0, 0, main).reshape({blocks, rows_per_block, b.size(1)}))
                   .sum(0);
  if (main < N) sum.addmm_(a.narrow(0, main, N - main).t(), b.narrow(0, main, N - main));
  return sum;
}

// grad [N, G], x [N, K] -> [G, K], contiguous. The narrow side is each block product's row dim: as the column
// dim it is MKL's slow path again (K = 1, N = 1000, G = 1024: 3.0 ms against 0.16 ms this way round).
inline Tensor weight_grad_by_blocks(const Tensor& grad, const Tensor& x, int64_t rows_per_block) {
  if (x.size(1) < grad.size(1)) return transposed_product_by_blocks(x, grad, rows_per_block).t().contiguous();
  return transposed_product_by_blocks(grad, x, rows_per_block);
}

inline Tensor weight_grad(const Tensor& grad, const Tensor& x) {
  constexpr int64_t kRowsPerProduct = 256, kRowsPerBlock = 64;
  if (weight_grad_in_blocks(grad, x, kRowsPerBlock)) return weight_grad_by_blocks(grad, x, kRowsPerBlock);
  if (!weight_grad_on_onednn(grad, x)) return grad.t().mm(x);
  Tensor sum = sum_of_parts(grad.size(0), kRowsPerProduct, [&](int64_t start, int64_t rows) {  // [K, G]
    return onednn::linear(x.narrow(0, start, rows).t().contiguous(), grad.narrow(0, start, rows).t(), std::nullopt);
  });
  return sum.t().contiguous();
}

// Input projection of all rows at once: x [N, I] -> [N, G*H] = x W^T + b1 + b2 (biases optional), the bias
// added inside the GEMM. Over a sequence's rows (N >= 256) on oneDNN wherever it can take it, AVX-512 or not:
// at::addmm first writes the broadcast bias into its [N, G] output and reads it back in the product. Measured
// on a 2-core Zen 2 (no AVX-512), LSTM training forward at B=16 T=64 against torch.nn side by side: H=512
// 0.87-0.93x on at::addmm, 0.98-1.00x here; H=256 0.92-0.96x vs 0.92-1.05x. A cell's few rows keep
// linear_once's rule (there oneDNN's ~20 us per call outweighs it: RNNCell at B=64 0.79x vs 0.96x on at::mm).
inline Tensor project(const Tensor& x, const Tensor& w, const std::optional<Tensor>& b1,
                      const std::optional<Tensor>& b2 = std::nullopt) {
  std::optional<Tensor> bias = b1;
  if (b1.has_value() && b2.has_value())
    bias = *b1 + *b2;
  else if (b2.has_value())
    bias = b2;
  constexpr int64_t kSequenceRows = 256;
  if (x.size(0) >= kSequenceRows && onednn_takes(x, w, /*on_any_cpu=*/true, /*min_macs=*/int64_t{1} << 20))
    return onednn::linear(x, w, bias);
  return linear_once(x, w, bias);
}

// The recurrent half of a cell's pre-activation, h [B, P] w^T for w [G, P]: where linear_once takes oneDNN
// it comes back apart, for the pointwise kernel to add as it reads; otherwise addmm_ accumulates it into
// pre [B, G] in place (fp16/bf16 then round the sum once, as before the kernels see it) and the result is
// undefined (no second input).
inline Tensor recurrent_part(const Tensor& pre, const Tensor& h, const Tensor& w) {
  if (onednn_takes(h, w)) return onednn::linear(h, w, std::nullopt);
  pre.addmm_(h, w.t());
  return Tensor();
}

// Sum over rows, accumulated in fp32 for reduced precision (at::sum does).
inline Tensor bias_grad(const Tensor& grad_gates) {
  return grad_gates.sum(0);
}

}  // namespace seqops
