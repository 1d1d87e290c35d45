// The state a recurrence carries from one step to the next (h, or dL/dh in a backward), held as a view of
// the previous step's result rather than copied into a state buffer every step.
//
// The active batch of a packed sequence only shrinks (forward in time) or only grows (reverse), so:
//  - same or smaller batch: the state is the first rows of the previous result, a view; rows that drop out
//    are final and are copied into the buffer once, when they drop;
//  - larger batch: the new rows start from the initial state, which the buffer still holds, so the previous
//    result is copied into the buffer's first rows once and the buffer becomes the state.
// An unpacked sequence therefore copies only at the end.
#pragma once

#include <ATen/ATen.h>

namespace seqops {

using at::Tensor;

class CarriedState {
 public:
  // initial: [B, F]; copied, never written
  explicit CarriedState(const Tensor& initial) : buffer_(initial.contiguous().clone()), view_(buffer_) {}

  // The state entering a step of `batch` rows: [batch, F], row-contiguous.
  Tensor enter(int64_t batch) {
    const int64_t held = view_.size(0);
    if (batch < held && !in_buffer_) buffer_.narrow(0, batch, held - batch).copy_(view_.narrow(0, batch, held - batch));
    if (batch > held) {
      if (!in_buffer_) buffer_.narrow(0, 0, held).copy_(view_);
      view_ = buffer_.narrow(0, 0, batch);
      in_buffer_ = true;
    }
    return view_.narrow(0, 0, batch);
  }

  // result: [batch, F], the state leaving the step; must stay alive and unchanged until the next enter()
  void leave(const Tensor& result) {
    view_ = result;
    in_buffer_ = false;
  }

  // [B, F]: every row's final state
  Tensor finish() {
    if (!in_buffer_) buffer_.narrow(0, 0, view_.size(0)).copy_(view_);
    in_buffer_ = true;
    view_ = buffer_;
    return buffer_;
  }

 private:
  Tensor buffer_;  // [B, F]: the initial state, overwritten by final rows as they are known
  Tensor view_;    // the current state's rows, in buffer_ or in the last step's result
  bool in_buffer_ = true;
};

}  // namespace seqops
