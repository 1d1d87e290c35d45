// CUDA implementations of the fused pointwise steps declared in rnn/pointwise.h.
// One thread per (row, column) element, grid-stride; storage fp32/fp16/bf16 with fp32 math, float64 in
// double. Launched on the current stream (the caller holds the device guard).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include "rnn/pointwise.h"

namespace seqops {

namespace {

__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
template <typename T>
__device__ __forceinline__ T sigmoid_(T x) {
  return T(1) / (T(1) + exp_(-x));  // -> exactly 0 for very negative x, like torch.sigmoid
}
// An optional input (undefined tensor -> null pointer) reads as 0; the branch is uniform over the grid.
template <typename T, typename S>
__device__ __forceinline__ T load_or_zero(const S* p, int64_t idx) {
  return p != nullptr ? static_cast<T>(p[idx]) : T(0);
}
template <typename S>
const S* optional_ptr(const Tensor& t) {
  return t.defined() ? t.const_data_ptr<S>() : nullptr;
}
inline int64_t optional_stride(const Tensor& t) { return t.defined() ? t.stride(0) : 0; }

template <typename T>
__device__ __forceinline__ T relu_(T x) {
  return (x > T(0) || x != x) ? x : T(0);  // NaN propagates, like torch.relu
}

// body(row, col) over rows x cols, 64-bit indices (activations of long sequences pass 2^31 elements).
template <typename Body>
__global__ void for_each_row_col_kernel(int64_t rows, int64_t cols, Body body) {
  const int64_t n = rows * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += stride)
    body(idx / cols, idx % cols);
}

template <typename Body>
void launch_rows_cols(int64_t rows, int64_t cols, const Body& body) {
  const int64_t n = rows * cols;
  if (n == 0) return;
  constexpr int kThreads = 256;
  // 64k blocks of 256 threads over-subscribe every current GPU; the grid-stride loop covers the rest.
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 65536);
  for_each_row_col_kernel<<<blocks, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(rows, cols, body);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

#define SEQOPS_DISPATCH_FLOATS(t, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), name, __VA_ARGS__)

}  // namespace

// gates: [B, 4H] (i, f, g, o) W_ih x + b in, activations out; gates_h: [B, 4H] W_hh h or undefined;
// c_prev/c_new/h_new: [B, H]
void lstm_forward_pointwise_cuda(const Tensor& gates, const Tensor& gates_h, const Tensor& c_prev,
                                 const Tensor& c_new, const Tensor& h_new) {
  const int64_t H = c_new.size(1);
  SEQOPS_DISPATCH_FLOATS(gates, "lstm_forward_pointwise_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    scalar_t* g = gates.data_ptr<scalar_t>();
    const scalar_t* gh = optional_ptr<scalar_t>(gates_h);
    const scalar_t* cp = c_prev.const_data_ptr<scalar_t>();
    scalar_t* cn = c_new.data_ptr<scalar_t>();
    scalar_t* hn = h_new.data_ptr<scalar_t>();
    const int64_t gs = gates.stride(0), ghs = optional_stride(gates_h);
    const int64_t cps = c_prev.stride(0), cns = c_new.stride(0), hs = h_new.stride(0);
    launch_rows_cols(gates.size(0), H, [=] __device__(int64_t r, int64_t j) {
      scalar_t* gr = g + r * gs + j;
      const int64_t hj = r * ghs + j;
      const T i = sigmoid_(static_cast<T>(gr[0]) + load_or_zero<T>(gh, hj));
      const T f = sigmoid_(static_cast<T>(gr[H]) + load_or_zero<T>(gh, hj + H));
      const T gg = tanh_(static_cast<T>(gr[2 * H]) + load_or_zero<T>(gh, hj + 2 * H));
      const T o = sigmoid_(static_cast<T>(gr[3 * H]) + load_or_zero<T>(gh, hj + 3 * H));
      const T c = f * static_cast<T>(cp[r * cps + j]) + i * gg;
      gr[0] = i;
      gr[H] = f;
      gr[2 * H] = gg;
      gr[3 * H] = o;
      cn[r * cns + j] = c;
      hn[r * hs + j] = o * tanh_(c);
    });
  });
}

// gates: [B, 4H] activations; c_prev/c_new/grad_h: [B, H]; grad_h_out: [B, H] or undefined;
// grad_c: [B, H] in dc_new, out dc_prev; grad_gates: [B, 4H] out
void lstm_backward_pointwise_cuda(const Tensor& gates, const Tensor& c_prev, const Tensor& c_new,
                                  const Tensor& grad_h, const Tensor& grad_h_out, const Tensor& grad_c,
                                  const Tensor& grad_gates) {
  const int64_t H = c_new.size(1);
  SEQOPS_DISPATCH_FLOATS(gates, "lstm_backward_pointwise_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* g = gates.const_data_ptr<scalar_t>();
    const scalar_t* cp = c_prev.const_data_ptr<scalar_t>();
    const scalar_t* cn = c_new.const_data_ptr<scalar_t>();
    const scalar_t* dh = grad_h.const_data_ptr<scalar_t>();
    const scalar_t* dho = optional_ptr<scalar_t>(grad_h_out);
    scalar_t* dc = grad_c.data_ptr<scalar_t>();
    scalar_t* dg = grad_gates.data_ptr<scalar_t>();
    const int64_t gs = gates.stride(0), cps = c_prev.stride(0), cns = c_new.stride(0);
    const int64_t dhs = grad_h.stride(0), dhos = optional_stride(grad_h_out);
    const int64_t dcs = grad_c.stride(0), dgs = grad_gates.stride(0);
    launch_rows_cols(gates.size(0), H, [=] __device__(int64_t r, int64_t j) {
      const scalar_t* gr = g + r * gs + j;
      const T i = gr[0], f = gr[H], gg = gr[2 * H], o = gr[3 * H];
      const T tc = tanh_(static_cast<T>(cn[r * cns + j]));
      const T d_h = static_cast<T>(dh[r * dhs + j]) + load_or_zero<T>(dho, r * dhos + j);
      const T d_c = static_cast<T>(dc[r * dcs + j]) + d_h * o * (T(1) - tc * tc);
      scalar_t* dgr = dg + r * dgs + j;
      dgr[0] = d_c * gg * i * (T(1) - i);
      dgr[H] = d_c * static_cast<T>(cp[r * cps + j]) * f * (T(1) - f);
      dgr[2 * H] = d_c * i * (T(1) - gg * gg);
      dgr[3 * H] = d_h * tc * o * (T(1) - o);
      dc[r * dcs + j] = d_c * f;
    });
  });
}

// gates_x: [B, 3H] (r, z, n) in W_ih x + b_ih, out activations; gates_h: [B, 3H]; h_prev/h_new/hn_saved: [B, H]
void gru_forward_pointwise_cuda(const Tensor& gates_x, const Tensor& gates_h, const Tensor& h_prev,
                                const Tensor& h_new, const Tensor& hn_saved) {
  const int64_t H = h_new.size(1);
  SEQOPS_DISPATCH_FLOATS(gates_x, "gru_forward_pointwise_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    scalar_t* gx = gates_x.data_ptr<scalar_t>();
    const scalar_t* gh = gates_h.const_data_ptr<scalar_t>();
    const scalar_t* hp = h_prev.const_data_ptr<scalar_t>();
    scalar_t* hn = h_new.data_ptr<scalar_t>();
    scalar_t* hs = hn_saved.data_ptr<scalar_t>();
    const int64_t gxs = gates_x.stride(0), ghs = gates_h.stride(0), hps = h_prev.stride(0);
    const int64_t hns = h_new.stride(0), hss = hn_saved.stride(0);
    launch_rows_cols(gates_x.size(0), H, [=] __device__(int64_t r, int64_t j) {
      scalar_t* x = gx + r * gxs + j;
      const scalar_t* h = gh + r * ghs + j;
      const T rg = sigmoid_(static_cast<T>(x[0]) + static_cast<T>(h[0]));
      const T z = sigmoid_(static_cast<T>(x[H]) + static_cast<T>(h[H]));
      const T h_n = h[2 * H];
      const T n = tanh_(static_cast<T>(x[2 * H]) + rg * h_n);
      const T hprev = hp[r * hps + j];
      x[0] = rg;
      x[H] = z;
      x[2 * H] = n;
      hs[r * hss + j] = h_n;
      hn[r * hns + j] = n + z * (hprev - n);
    });
  });
}

// gates: [B, 3H] activations; hn/h_prev: [B, H]; grad_h: [B, H] in dh_new, out z*dh_new;
// grad_gates_x/grad_gates_h: [B, 3H] out
void gru_backward_pointwise_cuda(const Tensor& gates, const Tensor& hn, const Tensor& h_prev,
                                 const Tensor& grad_h, const Tensor& grad_gates_x, const Tensor& grad_gates_h) {
  const int64_t H = h_prev.size(1);
  SEQOPS_DISPATCH_FLOATS(gates, "gru_backward_pointwise_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* g = gates.const_data_ptr<scalar_t>();
    const scalar_t* hnp = hn.const_data_ptr<scalar_t>();
    const scalar_t* hp = h_prev.const_data_ptr<scalar_t>();
    scalar_t* dh = grad_h.data_ptr<scalar_t>();
    scalar_t* dgx = grad_gates_x.data_ptr<scalar_t>();
    scalar_t* dgh = grad_gates_h.data_ptr<scalar_t>();
    const int64_t gs = gates.stride(0), hns = hn.stride(0), hps = h_prev.stride(0), dhs = grad_h.stride(0);
    const int64_t dgxs = grad_gates_x.stride(0), dghs = grad_gates_h.stride(0);
    launch_rows_cols(gates.size(0), H, [=] __device__(int64_t r, int64_t j) {
      const scalar_t* gr = g + r * gs + j;
      const T rg = gr[0], z = gr[H], n = gr[2 * H];
      const T d_h = dh[r * dhs + j];
      const T d_n = d_h * (T(1) - z) * (T(1) - n * n);
      const T d_z = d_h * (static_cast<T>(hp[r * hps + j]) - n) * z * (T(1) - z);
      const T d_r = d_n * static_cast<T>(hnp[r * hns + j]) * rg * (T(1) - rg);
      scalar_t* x = dgx + r * dgxs + j;
      scalar_t* h = dgh + r * dghs + j;
      x[0] = d_r;
      x[H] = d_z;
      x[2 * H] = d_n;
      h[0] = d_r;
      h[H] = d_z;
      h[2 * H] = d_n * rg;
      dh[r * dhs + j] = d_h * z;
    });
  });
}

// pre: [B, H] in; pre_h: [B, H] or undefined; h_new: [B, H] out = act(pre + pre_h), may alias pre
void rnn_forward_pointwise_cuda(const Tensor& pre, const Tensor& pre_h, const Tensor& h_new, bool relu) {
  SEQOPS_DISPATCH_FLOATS(pre, "rnn_forward_pointwise_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* p = pre.const_data_ptr<scalar_t>();
    const scalar_t* ph = optional_ptr<scalar_t>(pre_h);
    scalar_t* h = h_new.data_ptr<scalar_t>();
    const int64_t ps = pre.stride(0), phs = optional_stride(pre_h), hs = h_new.stride(0);
    launch_rows_cols(pre.size(0), pre.size(1), [=] __device__(int64_t r, int64_t j) {
      const T x = static_cast<T>(p[r * ps + j]) + load_or_zero<T>(ph, r * phs + j);
      h[r * hs + j] = relu ? relu_(x) : tanh_(x);
    });
  });
}

// h_new/grad_h: [B, H]; grad_h_out: [B, H] or undefined; grad_pre: [B, H] out, may alias grad_h
void rnn_backward_pointwise_cuda(const Tensor& h_new, const Tensor& grad_h, const Tensor& grad_h_out,
                                 const Tensor& grad_pre, bool relu) {
  SEQOPS_DISPATCH_FLOATS(h_new, "rnn_backward_pointwise_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    const scalar_t* h = h_new.const_data_ptr<scalar_t>();
    const scalar_t* dh = grad_h.const_data_ptr<scalar_t>();
    const scalar_t* dho = optional_ptr<scalar_t>(grad_h_out);
    scalar_t* dp = grad_pre.data_ptr<scalar_t>();
    const int64_t hs = h_new.stride(0), dhs = grad_h.stride(0), dhos = optional_stride(grad_h_out);
    const int64_t dps = grad_pre.stride(0);
    launch_rows_cols(h_new.size(0), h_new.size(1), [=] __device__(int64_t r, int64_t j) {
      const T y = h[r * hs + j];
      const T d = static_cast<T>(dh[r * dhs + j]) + load_or_zero<T>(dho, r * dhos + j);
      // relu: a select like torch's threshold_backward (a NaN output passes d; d at h <= 0 gives 0)
      dp[r * dps + j] = relu ? (y <= T(0) ? T(0) : d) : d * (T(1) - y * y);
    });
  });
}

}  // namespace seqops
