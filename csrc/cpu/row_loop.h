// One loop for every CPU pointwise kernel: rows in parallel, columns in SIMD vectors with a scalar tail.
// A kernel is written once as a generic lambda `body(row, col, Lane{})`; Lane::V is either
// at::vec::Vectorized<opmath> (a full vector of columns) or the scalar opmath type (one column), and the
// helpers below (load/store/sigmoid/tanh/...) are overloaded for both, so the math has one spelling.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/OpMathType.h>

#include "cpu/fast_math.h"

#include <cmath>
#include <type_traits>

namespace seqops::cpu {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename V>
struct Lane {
  using type = V;
};

// Scalar lane: storage -> opmath on load, opmath -> storage on store.
template <typename V, typename S, std::enable_if_t<std::is_arithmetic_v<V>, int> = 0>
inline V load(const S* p) {
  return static_cast<V>(*p);
}
template <typename V, typename S, std::enable_if_t<std::is_arithmetic_v<V>, int> = 0>
inline void store(S* p, V v) {
  *p = static_cast<S>(v);
}
// Vector lane: only used when storage == opmath (float, double).
template <typename V, typename S, std::enable_if_t<!std::is_arithmetic_v<V>, int> = 0>
inline V load(const S* p) {
  return V::loadu(p);
}
template <typename V, typename S, std::enable_if_t<!std::is_arithmetic_v<V>, int> = 0>
inline void store(S* p, V v) {
  v.store(p);
}

template <typename T>
inline T tanh_(T x) {
  return std::tanh(x);
}
template <typename T>
inline Vec<T> tanh_(Vec<T> x) {
  return x.tanh();
}
inline Vec<float> tanh_(Vec<float> x) { return fast_tanh(x); }
template <typename T>
inline T exp_(T x) {
  return std::exp(x);
}
template <typename T>
inline Vec<T> exp_(Vec<T> x) {
  return x.exp();
}
inline Vec<float> exp_(Vec<float> x) { return fast_exp(x); }
template <typename V>
inline V sigmoid_(V x) {
  // exp(-x) overflows to inf for very negative x, giving exactly 0, as torch.sigmoid does; NaN stays NaN.
  return V(1) / (V(1) + exp_(V(0) - x));
}
template <typename T>
inline T relu_(T x) {
  return std::isnan(x) ? x : (x > T(0) ? x : T(0));
}
template <typename T>
inline Vec<T> relu_(Vec<T> x) {
  return at::vec::clamp_min(x, Vec<T>(0));  // clamp_min propagates NaN like torch.relu
}
// d relu / d pre, expressed through the output h = relu(pre): 1 where h > 0.
// dL/dpre of relu given its output h: 0 where h <= 0, else d. A select, not d * step(h), so a non-finite d at
// an inactive unit gives 0 and a NaN output passes d, as torch's threshold_backward does.
template <typename T>
inline T relu_backward_(T d, T h) {
  return h <= T(0) ? T(0) : d;
}
template <typename T>
inline Vec<T> relu_backward_(Vec<T> d, Vec<T> h) {
  return Vec<T>::blendv(d, Vec<T>(0), h <= Vec<T>(0));
}

// Runs body(row, col, Lane<V>) over rows x cols. Rows in parallel; for float/double storage the columns
// go by full SIMD vectors, then a scalar tail; reduced-precision storage goes column by column in float.
template <typename scalar_t, typename Body>
inline void for_each_row_col(int64_t rows, int64_t cols, const Body& body) {
  using opmath_t = at::opmath_type<scalar_t>;
  // ~4k elements per task: a [32, 256] step splits over two threads (measured 45 -> 25 us for the LSTM
  // forward step), while a task still outweighs the ~2 us a parallel region costs.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t c = 0;
      if constexpr (std::is_same_v<scalar_t, opmath_t>) {
        constexpr int64_t width = Vec<opmath_t>::size();
        for (; c + width <= cols; c += width) body(r, c, Lane<Vec<opmath_t>>{});
      }
      for (; c < cols; ++c) body(r, c, Lane<opmath_t>{});
    }
  });
}

// Calls f(std::true_type{}) where the optional input t is defined, f(std::false_type{}) where it is not, so a
// kernel tests an optional input once (if constexpr) instead of per element.
template <typename F>
inline void with_optional(const at::Tensor& t, const F& f) {
  if (t.defined())
    f(std::true_type{});
  else
    f(std::false_type{});
}

}  // namespace seqops::cpu
