// The time axis of a layer op: which rows of the [N, F] activations belong to each step.
// Padded input [T, B, F] is the packed layout with every batch size equal to B, so one code path serves both.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/safe_numerics.h>

#include <optional>
#include <string>
#include <vector>

#include "rnn/gemm.h"

namespace seqops {

using at::Tensor;

struct Step {
  int64_t offset;  // first row of this step in the [N, F] layout
  int64_t batch;   // active rows: sequences still running (packed batches shrink, longest first)
};

struct TimeLayout {
  // Packed input's steps in time order; padded input's are computed (a stride-0 input of 2^40 steps must
  // reach the allocation error of its output, not first grow a list of 2^40 entries).
  std::vector<Step> steps;
  size_t length = 0;        // T, the number of steps
  int64_t batch = 0;        // B, the rows of the states
  int64_t rows = 0;         // N, the rows of the activations
  bool packed = false;
  bool uniform = true;      // every step has all B rows

  size_t size() const { return length; }
  Step step(size_t t) const {
    return packed ? steps[t] : Step{static_cast<int64_t>(t) * batch, batch};
  }
  // Steps in the order the recurrence runs them.
  Step at(size_t i, bool reverse) const { return step(reverse ? length - 1 - i : i); }
};

// input: [T, B, F] with no batch_sizes; [N, F] with batch_sizes [T] (CPU int64, non-increasing, sum N).
inline TimeLayout make_layout(const char* op, const Tensor& input, const std::optional<Tensor>& batch_sizes) {
  TimeLayout layout;
  if (!batch_sizes.has_value()) {
    TORCH_CHECK(input.dim() == 3, op, ": expected input of shape [seq_len, batch, input_size], got ",
                input.sizes());
    const int64_t T = input.size(0), B = input.size(1);
    // input_size 0 leaves T * B unbounded by the input's memory
    TORCH_CHECK(!c10::mul_overflows(T, B, &layout.rows), op, ": seq_len * batch overflows int64: ", input.sizes());
    layout.batch = B;
    layout.length = static_cast<size_t>(T);
    return layout;
  }
  const Tensor& bs = *batch_sizes;
  TORCH_CHECK(input.dim() == 2, op, ": packed input must be 2-D [sum(batch_sizes), input_size], got ",
              input.sizes());
  TORCH_CHECK(bs.dim() == 1 && bs.scalar_type() == at::kLong && bs.device().is_cpu(), op,
              ": batch_sizes must be a 1-D int64 CPU tensor, got ", bs.sizes(), " ", bs.scalar_type(), " on ",
              bs.device());
  const Tensor bsc = bs.contiguous();
  const int64_t* b = bsc.const_data_ptr<int64_t>();
  int64_t offset = 0;
  layout.packed = true;
  layout.batch = bs.numel() > 0 ? b[0] : 0;
  for (int64_t t = 0; t < bs.numel(); ++t) {
    TORCH_CHECK(b[t] > 0 && (t == 0 || b[t] <= b[t - 1]), op,
                ": batch_sizes must be positive and non-increasing, got batch_sizes[", t, "] = ", b[t],
                t == 0 ? "" : " after ", t == 0 ? std::string() : std::to_string(b[t - 1]));
    // Checked before the add, so a malformed batch_sizes cannot overflow the sum.
    TORCH_CHECK(b[t] <= input.size(0) - offset, op, ": batch_sizes sum to more than the packed input's ",
                input.size(0), " rows");
    layout.uniform = layout.uniform && b[t] == layout.batch;
    layout.steps.push_back({offset, b[t]});
    offset += b[t];
  }
  TORCH_CHECK(offset == input.size(0), op, ": batch_sizes sum to ", offset, " but the packed input has ",
              input.size(0), " rows");
  layout.rows = offset;
  layout.length = layout.steps.size();
  return layout;
}

// For every row of a step, the state it starts from, gathered into one [N, F] tensor so the backward can do
// its weight gradient as one GEMM. all: [N, F], the states written at each step; init: [B, F].
// A row's previous state is the previous step (in the run's direction) if that step had the row, else init.
inline Tensor gather_previous(const TimeLayout& layout, const Tensor& all, const Tensor& init, bool reverse) {
  const int64_t N = layout.rows, B = layout.batch;
  Tensor prev = at::empty({N, all.size(1)}, all.options());
  if (N == 0) return prev;
  if (layout.uniform) {  // two copies, not 2T
    if (reverse) {
      prev.narrow(0, 0, N - B).copy_(all.narrow(0, B, N - B));
      prev.narrow(0, N - B, B).copy_(init);
    } else {
      prev.narrow(0, 0, B).copy_(init);
      prev.narrow(0, B, N - B).copy_(all.narrow(0, 0, N - B));
    }
    return prev;
  }
  const int64_t T = static_cast<int64_t>(layout.size());
  for (int64_t t = 0; t < T; ++t) {
    const Step s = layout.step(t);
    const int64_t src_t = reverse ? t + 1 : t - 1;
    const int64_t from_prev = (src_t < 0 || src_t >= T) ? 0 : std::min(s.batch, layout.step(src_t).batch);
    if (from_prev > 0)
      prev.narrow(0, s.offset, from_prev).copy_(all.narrow(0, layout.step(src_t).offset, from_prev));
    if (from_prev < s.batch)
      prev.narrow(0, s.offset + from_prev, s.batch - from_prev).copy_(init.narrow(0, from_prev, s.batch - from_prev));
  }
  return prev;
}

// The state each step of a backward starts from, as views: the previous step's rows in the run's direction,
// or init for the first step. Only a packed sequence run in reverse (its batch grows) has steps whose rows
// come from both; for it the rows are gathered once, up front. all: [N, F]; init: [B, F].
class PreviousRows {
 public:
  PreviousRows(const TimeLayout& layout, const Tensor& all, const Tensor& init, bool reverse)
      : layout_(layout), all_(all), init_(init), reverse_(reverse) {
    if (reverse && !layout.uniform) gathered_ = gather_previous(layout, all, init, reverse);
  }

  // i: the step's index in run order -> [batch, F]
  Tensor at(size_t i) const {
    const Step s = layout_.at(i, reverse_);
    if (gathered_.defined()) return gathered_.narrow(0, s.offset, s.batch);
    if (i == 0) return init_.narrow(0, 0, s.batch);
    return all_.narrow(0, layout_.at(i - 1, reverse_).offset, s.batch);
  }

 private:
  const TimeLayout& layout_;
  Tensor all_, init_, gathered_;
  bool reverse_;
};

// dL/dW_hh = grad_gates^T @ h_prev: [G, N] x [N, F] -> [G, F], where h_prev is each row's previous state
// (see gather_previous). Unpacked, h_prev is `all` shifted by one step, so two GEMMs on views replace the
// [N, F] gather.
inline Tensor recurrent_weight_grad(const TimeLayout& layout, const Tensor& grad_gates, const Tensor& all,
                                   const Tensor& init, bool reverse) {
  const int64_t N = layout.rows, B = layout.batch;
  if (!layout.uniform || N == 0) return weight_grad(grad_gates, gather_previous(layout, all, init, reverse));
  if (N == B) return weight_grad(grad_gates, init);  // one step: no shifted rows (a zero-row product zero-fills)
  const int64_t first_of_init = reverse ? N - B : 0;  // the rows whose previous state is init
  const int64_t shifted = reverse ? 0 : B;            // the rows whose previous state is in all
  Tensor grad = weight_grad(grad_gates.narrow(0, shifted, N - B), all.narrow(0, B - shifted, N - B));
  return grad.addmm_(grad_gates.narrow(0, first_of_init, B).t(), init);
}

}  // namespace seqops
