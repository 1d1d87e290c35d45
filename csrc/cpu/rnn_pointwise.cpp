// CPU implementations of the fused pointwise steps declared in rnn/pointwise.h.
#include <ATen/Dispatch.h>

#include "cpu/lstm_math.h"
#include "cpu/row_loop.h"
#include "rnn/pointwise.h"

namespace seqops {

using cpu::for_each_row_col;
using cpu::load;
using cpu::relu_;
using cpu::relu_backward_;
using cpu::sigmoid_;
using cpu::store;
using cpu::tanh_;
using cpu::with_optional;

#define SEQOPS_DISPATCH_FLOATS(t, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), name, __VA_ARGS__)

// gates: [B, 4H] (i, f, g, o) W_ih x + b in, activations out; gates_h: [B, 4H] W_hh h or undefined;
// c_prev/c_new/h_new: [B, H]
void lstm_forward_pointwise_cpu(const Tensor& gates, const Tensor& gates_h, const Tensor& c_prev,
                                const Tensor& c_new, const Tensor& h_new) {
  const int64_t rows = gates.size(0), H = c_new.size(1);
  SEQOPS_DISPATCH_FLOATS(gates, "lstm_forward_pointwise_cpu", [&] {
    with_optional(gates_h, [&](auto has_gh) {
      auto* g = gates.data_ptr<scalar_t>();
      const scalar_t* gh = has_gh ? gates_h.const_data_ptr<scalar_t>() : nullptr;
      const auto* cp = c_prev.const_data_ptr<scalar_t>();
      auto* cn = c_new.data_ptr<scalar_t>();
      auto* hn = h_new.data_ptr<scalar_t>();
      const int64_t gs = gates.stride(0), ghs = has_gh ? gates_h.stride(0) : 0;
      const int64_t cps = c_prev.stride(0), cns = c_new.stride(0), hs = h_new.stride(0);
      for_each_row_col<scalar_t>(rows, H, [&](int64_t r, int64_t j, auto lane) {
        using V = typename decltype(lane)::type;
        scalar_t* gr = g + r * gs + j;
        const auto pre = [&](int64_t k) {
          if constexpr (decltype(has_gh)::value)
            return load<V>(gr + k * H) + load<V>(gh + r * ghs + j + k * H);
          else
            return load<V>(gr + k * H);
        };
        const auto y = cpu::lstm_forward_math(pre(0), pre(1), pre(2), pre(3), load<V>(cp + r * cps + j));
        store(gr, y.i);
        store(gr + H, y.f);
        store(gr + 2 * H, y.g);
        store(gr + 3 * H, y.o);
        store(cn + r * cns + j, y.c);
        store(hn + r * hs + j, y.h);
      });
    });
  });
}

// gates: [B, 4H] activations; c_prev/c_new/grad_h: [B, H]; grad_h_out: [B, H] or undefined;
// grad_c: [B, H] in dc_new, out dc_prev; grad_gates: [B, 4H] out
void lstm_backward_pointwise_cpu(const Tensor& gates, const Tensor& c_prev, const Tensor& c_new,
                                 const Tensor& grad_h, const Tensor& grad_h_out, const Tensor& grad_c,
                                 const Tensor& grad_gates) {
  const int64_t rows = gates.size(0), H = c_new.size(1);
  SEQOPS_DISPATCH_FLOATS(gates, "lstm_backward_pointwise_cpu", [&] {
    with_optional(grad_h_out, [&](auto has_out) {
      const auto* g = gates.const_data_ptr<scalar_t>();
      const auto* cp = c_prev.const_data_ptr<scalar_t>();
      const auto* cn = c_new.const_data_ptr<scalar_t>();
      const auto* dh = grad_h.const_data_ptr<scalar_t>();
      const scalar_t* dho = has_out ? grad_h_out.const_data_ptr<scalar_t>() : nullptr;
      auto* dc = grad_c.data_ptr<scalar_t>();
      auto* dg = grad_gates.data_ptr<scalar_t>();
      const int64_t gs = gates.stride(0), cps = c_prev.stride(0), cns = c_new.stride(0);
      const int64_t dhs = grad_h.stride(0), dhos = has_out ? grad_h_out.stride(0) : 0;
      const int64_t dcs = grad_c.stride(0), dgs = grad_gates.stride(0);
      for_each_row_col<scalar_t>(rows, H, [&](int64_t r, int64_t j, auto lane) {
        using V = typename decltype(lane)::type;
        const scalar_t* gr = g + r * gs + j;
        V d_h = load<V>(dh + r * dhs + j);
        if constexpr (decltype(has_out)::value) d_h = d_h + load<V>(dho + r * dhos + j);
        scalar_t* dcr = dc + r * dcs + j;
        const auto d = cpu::lstm_backward_math(load<V>(gr), load<V>(gr + H), load<V>(gr + 2 * H), load<V>(gr + 3 * H),
                                               load<V>(cp + r * cps + j), load<V>(cn + r * cns + j), d_h, load<V>(dcr));
        scalar_t* dgr = dg + r * dgs + j;
        store(dgr, d.d_i);
        store(dgr + H, d.d_f);
        store(dgr + 2 * H, d.d_g);
        store(dgr + 3 * H, d.d_o);
        store(dcr, d.d_c_prev);
      });
    });
  });
}

// gates_x: [B, 3H] (r, z, n) in W_ih x + b_ih, out activations; gates_h: [B, 3H] W_hh h + b_hh;
// h_prev/h_new/hn_saved: [B, H]
void gru_forward_pointwise_cpu(const Tensor& gates_x, const Tensor& gates_h, const Tensor& h_prev,
                               const Tensor& h_new, const Tensor& hn_saved) {
  const int64_t rows = gates_x.size(0), H = h_new.size(1);
  SEQOPS_DISPATCH_FLOATS(gates_x, "gru_forward_pointwise_cpu", [&] {
    auto* gx = gates_x.data_ptr<scalar_t>();
    const auto* gh = gates_h.const_data_ptr<scalar_t>();
    const auto* hp = h_prev.const_data_ptr<scalar_t>();
    auto* hn = h_new.data_ptr<scalar_t>();
    auto* hs = hn_saved.data_ptr<scalar_t>();
    const int64_t gxs = gates_x.stride(0), ghs = gates_h.stride(0), hps = h_prev.stride(0);
    const int64_t hns = h_new.stride(0), hss = hn_saved.stride(0);
    for_each_row_col<scalar_t>(rows, H, [&](int64_t r, int64_t j, auto lane) {
      using V = typename decltype(lane)::type;
      scalar_t* x = gx + r * gxs + j;
      const scalar_t* h = gh + r * ghs + j;
      const V rg = sigmoid_(load<V>(x) + load<V>(h));
      const V z = sigmoid_(load<V>(x + H) + load<V>(h + H));
      const V h_n = load<V>(h + 2 * H);
      const V n = tanh_(load<V>(x + 2 * H) + rg * h_n);
      const V hprev = load<V>(hp + r * hps + j);
      store(x, rg);
      store(x + H, z);
      store(x + 2 * H, n);
      store(hs + r * hss + j, h_n);
      store(hn + r * hns + j, n + z * (hprev - n));
    });
  });
}

// gates: [B, 3H] activations; hn/h_prev: [B, H]; grad_h: [B, H] in dh_new, out z*dh_new;
// grad_gates_x/grad_gates_h: [B, 3H] out
void gru_backward_pointwise_cpu(const Tensor& gates, const Tensor& hn, const Tensor& h_prev,
                                const Tensor& grad_h, const Tensor& grad_gates_x, const Tensor& grad_gates_h) {
  const int64_t rows = gates.size(0), H = h_prev.size(1);
  SEQOPS_DISPATCH_FLOATS(gates, "gru_backward_pointwise_cpu", [&] {
    const auto* g = gates.const_data_ptr<scalar_t>();
    const auto* hnp = hn.const_data_ptr<scalar_t>();
    const auto* hp = h_prev.const_data_ptr<scalar_t>();
    auto* dh = grad_h.data_ptr<scalar_t>();
    auto* dgx = grad_gates_x.data_ptr<scalar_t>();
    auto* dgh = grad_gates_h.data_ptr<scalar_t>();
    const int64_t gs = gates.stride(0), hns = hn.stride(0), hps = h_prev.stride(0), dhs = grad_h.stride(0);
    const int64_t dgxs = grad_gates_x.stride(0), dghs = grad_gates_h.stride(0);
    for_each_row_col<scalar_t>(rows, H, [&](int64_t r, int64_t j, auto lane) {
      using V = typename decltype(lane)::type;
      const scalar_t* gr = g + r * gs + j;
      const V rg = load<V>(gr), z = load<V>(gr + H), n = load<V>(gr + 2 * H);
      scalar_t* dhr = dh + r * dhs + j;
      const V d_h = load<V>(dhr);
      const V d_n = d_h * (V(1) - z) * (V(1) - n * n);
      const V d_z = d_h * (load<V>(hp + r * hps + j) - n) * z * (V(1) - z);
      const V d_r = d_n * load<V>(hnp + r * hns + j) * rg * (V(1) - rg);
      scalar_t* x = dgx + r * dgxs + j;
      scalar_t* h = dgh + r * dghs + j;
      store(x, d_r);
      store(x + H, d_z);
      store(x + 2 * H, d_n);
      store(h, d_r);
      store(h + H, d_z);
      store(h + 2 * H, d_n * rg);
      store(dhr, d_h * z);
    });
  });
}

// pre: [B, H] in; pre_h: [B, H] or undefined; h_new: [B, H] out = act(pre + pre_h), may alias pre
void rnn_forward_pointwise_cpu(const Tensor& pre, const Tensor& pre_h, const Tensor& h_new, bool relu) {
  const int64_t rows = pre.size(0), H = pre.size(1);
  SEQOPS_DISPATCH_FLOATS(pre, "rnn_forward_pointwise_cpu", [&] {
    with_optional(pre_h, [&](auto has_h) {
      const auto* p = pre.const_data_ptr<scalar_t>();
      const scalar_t* ph = has_h ? pre_h.const_data_ptr<scalar_t>() : nullptr;
      auto* h = h_new.data_ptr<scalar_t>();
      const int64_t ps = pre.stride(0), phs = has_h ? pre_h.stride(0) : 0, hs = h_new.stride(0);
      for_each_row_col<scalar_t>(rows, H, [&](int64_t r, int64_t j, auto lane) {
        using V = typename decltype(lane)::type;
        V x = load<V>(p + r * ps + j);
        if constexpr (decltype(has_h)::value) x = x + load<V>(ph + r * phs + j);
        store(h + r * hs + j, relu ? relu_(x) : tanh_(x));
      });
    });
  });
}

// h_new/grad_h: [B, H]; grad_h_out: [B, H] or undefined; grad_pre: [B, H] out, may alias grad_h
void rnn_backward_pointwise_cpu(const Tensor& h_new, const Tensor& grad_h, const Tensor& grad_h_out,
                                const Tensor& grad_pre, bool relu) {
  const int64_t rows = h_new.size(0), H = h_new.size(1);
  SEQOPS_DISPATCH_FLOATS(h_new, "rnn_backward_pointwise_cpu", [&] {
    with_optional(grad_h_out, [&](auto has_out) {
      const auto* h = h_new.const_data_ptr<scalar_t>();
      const auto* dh = grad_h.const_data_ptr<scalar_t>();
      const scalar_t* dho = has_out ? grad_h_out.const_data_ptr<scalar_t>() : nullptr;
      auto* dp = grad_pre.data_ptr<scalar_t>();
      const int64_t hs = h_new.stride(0), dhs = grad_h.stride(0), dps = grad_pre.stride(0);
      const int64_t dhos = has_out ? grad_h_out.stride(0) : 0;
      for_each_row_col<scalar_t>(rows, H, [&](int64_t r, int64_t j, auto lane) {
        using V = typename decltype(lane)::type;
        const V y = load<V>(h + r * hs + j);
        V d = load<V>(dh + r * dhs + j);
        if constexpr (decltype(has_out)::value) d = d + load<V>(dho + r * dhos + j);
        store(dp + r * dps + j, relu ? relu_backward_(d, y) : d * (V(1) - y * y));
      });
    });
  });
}

}  // namespace seqops
