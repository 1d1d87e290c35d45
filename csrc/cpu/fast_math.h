// exp and tanh for float vectors, written on at::vec so they compile for every CPU_CAPABILITY. SLEEF's
// 1-ulp versions (what Vectorized<float>::exp()/tanh() call) dominated the LSTM step's pointwise kernel
// (three sigmoids and two tanh per element); these are ~2x faster there at a few ulp, far inside the fp32
// tolerance the layers are tested to. float64 keeps SLEEF.
//
// exp: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two parts so r is exact to float precision), exp(r) by
// its Taylor series to r^7 (truncation < 1e-8 relative), 2^n assembled in the exponent bits.
// tanh: |x| < 0.5 by its odd Taylor series to x^15 (truncation < 2e-8 relative); beyond, 1 - 2 / (exp(2x) + 1),
// whose rounding costs up to 5 ulp just above |x| = 0.5 (measured) and fades as |x| grows.
// Both propagate NaN; exp gives +inf above ln(FLT_MAX), denormals below ln(FLT_MIN), 0 below the smallest.
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <limits>

namespace seqops::cpu {

inline at::vec::Vectorized<float> fast_exp(at::vec::Vectorized<float> x) {
  using V = at::vec::Vectorized<float>;
  using I = at::vec::Vectorized<int32_t>;
  const V max_arg(88.72283935546875f), min_arg(-103.97208404541016f);  // ln(FLT_MAX), ln(smallest denormal)
  const V xc = at::vec::minimum(at::vec::maximum(x, min_arg), max_arg);  // NaN passes through
  const V n = (xc * V(1.44269502162933349609f)).round();                  // x / ln2
  V r = at::vec::fnmadd(n, V(0.693145751953125f), xc);                     // ln2, high part (exact n * hi)
  r = at::vec::fnmadd(n, V(1.428606765330187045e-06f), r);                 // ln2, low part
  V p(1.0f / 5040.0f);
  p = at::vec::fmadd(p, r, V(1.0f / 720.0f));
  p = at::vec::fmadd(p, r, V(1.0f / 120.0f));
  p = at::vec::fmadd(p, r, V(1.0f / 24.0f));
  p = at::vec::fmadd(p, r, V(1.0f / 6.0f));
  p = at::vec::fmadd(p, r, V(0.5f));
  p = at::vec::fmadd(p, r, V(1.0f));
  p = at::vec::fmadd(p, r, V(1.0f));
  // 2^n as 2^(n/2) * 2^(n - n/2), each assembled in the exponent bits ((k + 127) << 23), so n from -150 to 128
  // (denormal results, overflow to inf) needs no special case. n of NaN gives garbage, but p is NaN then.
  const I ni = at::vec::convert_to_int_of_same_size(n);
  const I n1 = ni >> I(1);
  const V scale1 = at::vec::cast<float>((n1 + I(127)) << I(23));
  const V scale2 = at::vec::cast<float>((ni - n1 + I(127)) << I(23));
  V result = (p * scale1) * scale2;
  result = V::blendv(result, V(std::numeric_limits<float>::infinity()), x > max_arg);
  return V::blendv(result, V(0.0f), x < min_arg);
}

inline at::vec::Vectorized<float> fast_tanh(at::vec::Vectorized<float> x) {
  using V = at::vec::Vectorized<float>;
  const V x2 = x * x;
  // tanh Taylor coefficients of x^15, x^13, ..., x^3
  V p(-929569.0f / 638512875.0f);
  p = at::vec::fmadd(p, x2, V(21844.0f / 6081075.0f));
  p = at::vec::fmadd(p, x2, V(-1382.0f / 155925.0f));
  p = at::vec::fmadd(p, x2, V(62.0f / 2835.0f));
  p = at::vec::fmadd(p, x2, V(-17.0f / 315.0f));
  p = at::vec::fmadd(p, x2, V(2.0f / 15.0f));
  p = at::vec::fmadd(p, x2, V(-1.0f / 3.0f));
  const V small = at::vec::fmadd(p * x2, x, x);
  const V large = V(1.0f) - V(2.0f) / (fast_exp(x + x) + V(1.0f));  // exp overflow -> exactly 1; -> 0: -1
  return V::blendv(large, small, x.abs() < V(0.5f));
}

}  // namespace seqops::cpu
