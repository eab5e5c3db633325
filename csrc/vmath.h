// Vectorisable exp, expm1, log1p, tanh, erf and erfc for float and double.
//
// Each function is a branch-free scalar template (GC_INLINE) that the compiler turns into
// SIMD code inside a `#pragma omp simd` loop of a dispatched kernel (simd.h): the AVX2+FMA
// clone evaluates 8 floats / 4 doubles per instruction, the baseline clone 4 / 2 with
// SSE2. Special cases are selects at the end, never branches, and every lane computes
// every piece it may need. No libm call, no table, no integer<->float conversion wider
// than the target supports (k and 2^n come from bit patterns).
//
// Accuracy (tests/test_vmath.py measures it against libm over dense sweeps of the whole
// range, both dispatch paths): exp, log1p, tanh, erf within 1 ulp, expm1 within 2, erfc
// within 4, including subnormal inputs and outputs, +-0 (kept where libm keeps it),
// +-inf and NaN (NaN in, NaN out).
//
// The polynomials are near-minimax Chebyshev fits made by tools/fit_vmath.py; each range
// reduction is described next to its function.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>

#include "parallel.h"
#include "simd.h"

namespace gc {
namespace vmath {

// ------------------------------------------------------------------------- per type

template <class T>
struct Traits;

template <>
struct Traits<double> {
  using U = std::uint64_t;
  static constexpr int mant_bits = 52;
  static constexpr U bias = 1023;
  static constexpr U mant_mask = (U(1) << 52) - 1;
  // x * (1/ln2) + 1.5 * 2^52 rounds x / ln2 to an integer held in the low mantissa bits.
  static constexpr double shifter = 0x1.8p52;
  static constexpr double two_mant = 0x1p52;  // 2^mant_bits
  static constexpr double inv_ln2 = 0x1.71547652b82fep0;
  // ln2 = ln2_hi + ln2_lo; ln2_hi has 21 trailing zero bits, so n * ln2_hi is exact for
  // every |n| < 2^21 and x - n * ln2_hi has no rounding error.
  static constexpr double ln2_hi = 0x1.62e42feep-1;
  static constexpr double ln2_lo = 0x1.a39ef35793c76p-33;
  // exp: below exp_min the result rounds to 0, above exp_max to +inf; clamping there
  // keeps 2^n in two normal factors.
  static constexpr double exp_min = -746.0, exp_max = 710.0;
  static constexpr U sqrt_half = 0x3fe6a09e667f3bcd;  // bits of sqrt(2)/2
  static constexpr double log1p_tiny = 0x1p-54;       // log1p(x), expm1(x) round to x below
  static constexpr double expm1_big = 40.0;           // e^x - 1 rounds to e^x above
  static constexpr U split_mask = ~((U(1) << 27) - 1);  // 26 significant bits: square exact
  static constexpr double erfc_max = 28.0;            // erfc rounds to 0 above
};

template <>
struct Traits<float> {
  using U = std::uint32_t;
  static constexpr int mant_bits = 23;
  static constexpr U bias = 127;
  static constexpr U mant_mask = (U(1) << 23) - 1;
  static constexpr float shifter = 0x1.8p23f;
  static constexpr float two_mant = 0x1p23f;
  static constexpr float inv_ln2 = 0x1.715476p0f;
  static constexpr float ln2_hi = 0x1.62e4p-1f;  // 9 trailing zero bits
  static constexpr float ln2_lo = 0x1.7f7d1cp-20f;
  static constexpr float exp_min = -104.0f, exp_max = 89.0f;
  static constexpr U sqrt_half = 0x3f3504f3;
  static constexpr float log1p_tiny = 0x1p-25f;
  static constexpr float expm1_big = 18.0f;
  static constexpr U split_mask = ~((U(1) << 12) - 1);  // 12 significant bits
  static constexpr float erfc_max = 10.1f;
};

template <class T>
struct Coeffs;

template <>
struct Coeffs<double> {
  // exp: 11 terms on [-0.35, 0.35], fit error 1.56e-18
  static constexpr double exp_q[] = {
      0x1.1f75a3caadff5p-29, 0x1.af5282aacdb2ep-26, 0x1.27e4da1e12fb1p-22,
      0x1.71ddfff6573d6p-19, 0x1.a01a01a74077ap-16, 0x1.a01a01ac9de9ep-13,
      0x1.6c16c16c16214p-10, 0x1.111111110ff8bp-7, 0x1.5555555555556p-5,
      0x1.5555555555557p-3, 0x1p-1};
  // log1p: 8 terms on [0, 0.0294667], fit error 2.09e-18
  static constexpr double log1p_p[] = {
      0x1.0c0aff044a97p-3, 0x1.0fbde0f4ad17bp-3, 0x1.3b1c3c1c81c8fp-3,
      0x1.745cf8e4bba1bp-3, 0x1.c71c7201a55d7p-3, 0x1.2492492476a1ap-2,
      0x1.9999999999a39p-2, 0x1.5555555555555p-1};
  // tanh: 12 terms on [0, 0.390625], fit error 3.94e-18
  static constexpr double tanh_p[] = {
      0x1.b33642a122cddp-18, -0x1.05bbdae896297p-15, 0x1.8445870f6fe41p-14,
      -0x1.f243823c8c981p-13, 0x1.3526e9ed54da1p-11, -0x1.7d9f6f23e8682p-10,
      0x1.d6d39ae3905e2p-9, -0x1.226e3473dce5cp-7, 0x1.664f487e0a749p-6,
      -0x1.ba1ba1ba0f126p-5, 0x1.11111111110a8p-3, -0x1.5555555555555p-2};
  // erf: 12 terms on [0, 0.7119140625], fit error 1.41e-19
  static constexpr double erf_q[] = {
      -0x1.e82ab4a2799adp-31, 0x1.e819bbd6706fep-27, -0x1.5e1b368bdf09ep-23,
      0x1.b9c9ed1d47fd5p-20, -0x1.f4d0c17daf57fp-17, 0x1.f9a317b0dcb87p-14,
      -0x1.c02db3a033205p-11, 0x1.565bcd0ceb1d7p-8, -0x1.b82ce31281a71p-6,
      0x1.ce2f21a042acfp-4, -0x1.812746b0379e6p-2, 0x1.06eba8214db69p-3};
  // erfc: 22 terms on [-0.714286, 0.806452], fit error 6.44e-18
  static constexpr double erfc_e[] = {
      -0x1.08c0541a34a1dp-26, 0x1.89d482c35f998p-26, 0x1.e01239a37bc3ap-24,
      -0x1.05551b9c7b495p-23, -0x1.522e923875db7p-21, 0x1.7240e039a3bd2p-22,
      0x1.d34dda94a5cdcp-19, -0x1.865668834917p-21, -0x1.514bf9e11f612p-16,
      0x1.4c15c8ccdacffp-18, 0x1.065ac05cf2849p-13, -0x1.b912511ace57p-14,
      -0x1.98db569ae9f33p-11, 0x1.ef1bdd1571101p-10, 0x1.4b884e6674be3p-9,
      -0x1.8574c40ba6a7p-6, 0x1.17ca2877e25b3p-4, -0x1.e88b803a49709p-4,
      0x1.098366a5b49a5p-3, -0x1.85a15c58aa5bcp-5, -0x1.15c084bb9e8f8p-3,
      0x1.40c522d7e4987p+0};
};

template <>
struct Coeffs<float> {
  // exp: 6 terms on [-0.35, 0.35], fit error 1.49e-9
  static constexpr float exp_q[] = {
      0x1.a12a34p-13f, 0x1.6d491p-10f, 0x1.1110ep-7f,
      0x1.5554e4p-5f, 0x1.555556p-3f, 0x1p-1f};
  // log1p: 4 terms on [0, 0.0294667], fit error 1.16e-9
  static constexpr float log1p_p[] = {
      0x1.ddd4dap-3f, 0x1.245c28p-2f, 0x1.9999ecp-2f,
      0x1.555556p-1f};
  // tanh: 6 terms on [0, 0.390625], fit error 1.6e-9
  static constexpr float tanh_p[] = {
      0x1.2c83cp-9f, -0x1.116a16p-7f, 0x1.64a976p-6f,
      -0x1.ba08c4p-5f, 0x1.1110eap-3f, -0x1.555556p-2f};
  // erf: 6 terms on [0, 0.7119140625], fit error 5.87e-9
  static constexpr float erf_q[] = {
      -0x1.4d1556p-11f, 0x1.4b71d2p-8f, -0x1.b73192p-6f,
      0x1.ce24cap-4f, -0x1.81271ep-2f, 0x1.06eba8p-3f};
  // erfc: 11 terms on [-0.714286, 0.541985], fit error 5.85e-10
  static constexpr float erfc_e[] = {
      -0x1.93db8p-13f, -0x1.6e854p-11f, 0x1.00a3eep-9f,
      0x1.490f56p-9f, -0x1.85c4d2p-6f, 0x1.17cc1p-4f,
      -0x1.e8893cp-4f, 0x1.09835ep-3f, -0x1.85a18ap-5f,
      -0x1.15c084p-3f, 0x1.40c522p+0f};
};

// Below erf_small, erf(x) = x + x q(x^2); above it erf = 1 - erfc, whose error is then
// scaled down by erfc / erf < 0.3. erfc uses 1 - erf below erfc_small (erf <= 0.52).
constexpr double kTanhSmall = 0.625;
constexpr double kErfSmall = 0.84375;
constexpr double kErfcSmall = 0.5;
constexpr double kErfcK = 3.0;  // erfc's polynomial variable t = (z - K) / (z + K)

// ------------------------------------------------------------------------- helpers

template <class T>
GC_INLINE typename Traits<T>::U to_bits(T x) {
  typename Traits<T>::U u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}

template <class T>
GC_INLINE T from_bits(typename Traits<T>::U u) {
  T x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

// c[0] x^(N-1) + ... + c[N-1].
template <class T, std::size_t N>
GC_INLINE T horner(T x, const T (&c)[N]) {
  T r = c[0];
  // Unrolled before vectorisation: a loop left in the element loop would stop it.
#pragma GCC unroll 32
  for (std::size_t i = 1; i < N; ++i) r = r * x + c[i];
  return r;
}

// The same polynomial as two interleaved Horner chains in x^2 (the coefficients of one
// parity of degree each): half the dependent latency of plain Horner, for the long ones.
template <class T, std::size_t N>
GC_INLINE T poly(T x, const T (&c)[N]) {
  if constexpr (N < 12) {
    return horner(x, c);
  } else {
    const T x2 = x * x;
    T p = c[0], q = c[1];  // p: degrees N-1, N-3, ...; q: N-2, N-4, ...
#pragma GCC unroll 32
    for (std::size_t i = 2; i < N; i += 2) {
      p = p * x2 + c[i];
      if (i + 1 < N) q = q * x2 + c[i + 1];
    }
    return N % 2 == 0 ? p * x + q : q * x + p;  // the chain ending in degree 1 takes the x
  }
}

template <class T>
GC_INLINE T copysign_of(T magnitude, T sign) {
  using U = typename Traits<T>::U;
  constexpr U s = U(1) << (sizeof(U) * 8 - 1);
  return from_bits<T>((to_bits(magnitude) & ~s) | (to_bits(sign) & s));
}

// ------------------------------------------------------------------------- exp

// e^(hi + lo) = (1 + pm1) s1 s2 with pm1 = e^r - 1 and s1 s2 = 2^n.
template <class T>
struct ExpParts {
  T pm1, s1, s2;
};

// e^(hi + lo) for |lo| tiny next to 1 (lo carries the rounding error of hi; 0 for exp).
// n = round(hi / ln2), r = hi - n ln2 in [-0.35, 0.35], e^r - 1 = r + r^2 q(r), and
// 2^n applied as two factors 2^(n/2) 2^(n - n/2): each is a normal number for every
// clamped hi, so results near overflow do not overflow early and subnormal results are
// rounded once, by the last multiplication.
template <class T>
GC_INLINE ExpParts<T> exp_split(T hi, T lo) {
  using V = Traits<T>;
  using U = typename V::U;
  T x = hi > V::exp_max ? V::exp_max : hi;  // NaN passes both clamps
  x = x < V::exp_min ? V::exp_min : x;
  const T kd = x * V::inv_ln2 + V::shifter;
  const T n = kd - V::shifter;
  const T r = (x - n * V::ln2_hi) + (lo - n * V::ln2_lo);
  // kd's bits are shifter's + n: halve them (shifter's are even) for n/2 rounded down.
  const U ki = to_bits(kd), sb = to_bits(V::shifter);
  const U half = ki >> 1;
  return {r + r * r * poly(r, Coeffs<T>::exp_q), from_bits<T>((half - (sb >> 1) + V::bias) << V::mant_bits),
          from_bits<T>((ki - half - (sb - (sb >> 1)) + V::bias) << V::mant_bits)};
}

template <class T>
GC_INLINE T exp_parts(T hi, T lo) {
  const ExpParts<T> e = exp_split(hi, lo);
  return (T(1) + e.pm1) * e.s1 * e.s2;
}

template <class T>
GC_INLINE T exp(T x) {
  return exp_parts(x, T(0));
}

// e^x - 1 without the cancellation near 0. With n and r as in exp_parts and
// e^r - 1 = r + r^2 q(r) (relative accuracy kept for small r; r = x exactly when n = 0):
// e^x - 1 = 2^n (e^r - 1) + (2^n - 1), both terms exact or rounded once for |x| <= big,
// where 2^n is one normal factor. Above big, e^x - 1 rounds to e^x; below -big, to -1.
template <class T>
GC_INLINE T expm1(T x) {
  using V = Traits<T>;
  const T c = x > V::expm1_big ? V::expm1_big : x;  // NaN passes both clamps
  const T xc = c < -V::expm1_big ? -V::expm1_big : c;
  const T kd = xc * V::inv_ln2 + V::shifter;
  const T n = kd - V::shifter;
  const T r = (xc - n * V::ln2_hi) - n * V::ln2_lo;
  const T pm1 = r + r * r * poly(r, Coeffs<T>::exp_q);
  const T s = from_bits<T>((to_bits(kd) - to_bits(V::shifter) + V::bias) << V::mant_bits);
  T y = s * pm1 + (s - T(1));
  y = x > V::expm1_big ? exp(x) : y;
  y = x < -V::expm1_big ? T(-1) : y;
  return (x < V::log1p_tiny && x > -V::log1p_tiny) ? x : y;  // keeps -0 and subnormals
}

// ------------------------------------------------------------------------- log1p

// 1 + x = 2^k m with m in [sqrt(2)/2, sqrt(2)), f = m - 1, s = f / (2 + f):
// log(1 + f) = 2 atanh(s) = f - f^2/2 + s (f^2/2 + R), R = s^2 p(s^2), and
// log1p(x) = k ln2 + log(1 + f) + c / (1 + x), where c = x - ((1 + x) - 1) is the rounding
// error of forming 1 + x. When k = 0, f is x itself (no rounding at all).
template <class T>
GC_INLINE T log1p(T x) {
  using V = Traits<T>;
  using U = typename V::U;
  const T u = T(1) + x;
  // Shift u's bits so that m's range starts at an exponent boundary: the exponent field
  // is then k + bias and the mantissa field m's.
  const U ui = to_bits(u) + (to_bits(T(1)) - V::sqrt_half);
  const U kb = ui >> V::mant_bits;
  const T m = from_bits<T>((ui & V::mant_mask) + V::sqrt_half);
  // k as a float from its bits (kb < 2^mant_bits): no integer conversion instruction.
  const T k = (from_bits<T>(to_bits(V::two_mant) | kb) - V::two_mant) - T(V::bias);
  const bool k0 = kb == V::bias;
  const T f = k0 ? x : m - T(1);
  const T c = k0 ? T(0) : (x - (u - T(1))) / u;
  const T s = f / (T(2) + f);
  const T w = s * s;
  const T hfsq = T(0.5) * f * f;
  const T R = w * poly(w, Coeffs<T>::log1p_p);
  T y = k * V::ln2_hi - ((hfsq - (s * (hfsq + R) + (k * V::ln2_lo + c))) - f);
  constexpr T inf = std::numeric_limits<T>::infinity();
  y = x == inf ? inf : y;
  y = x > T(-1) ? y : (x == T(-1) ? -inf : std::numeric_limits<T>::quiet_NaN());
  return (x < V::log1p_tiny && x > -V::log1p_tiny) ? x : y;  // keeps -0 and subnormals
}

// ------------------------------------------------------------------------- tanh

// |x| < 0.625: tanh(x) = x + x w p(w), w = x^2. Above: 1 - 2 / (e^(2|x|) + 1), which has
// lost at most a bit to cancellation at 0.625 and tends to exactly 1 (e^(2|x|) = inf).
template <class T>
GC_INLINE T tanh(T x) {
  // Both branches on |x| and the sign put back last: tanh(-0) = -0.
  const T ax = x < T(0) ? -x : x;
  const T w = x * x;
  const T small = ax + ax * (w * poly(w, Coeffs<T>::tanh_p));
  const T big = T(1) - T(2) / (exp(T(2) * ax) + T(1));
  return copysign_of(ax < T(kTanhSmall) ? small : big, x);
}

// ------------------------------------------------------------------------- erf, erfc

// erfc(z) for z >= 0.5 (clamped to erfc_max, where it is 0): exp(-z^2) e(t) / (1 + 2 z)
// with t = (z - 3) / (z + 3) in [-0.72, 0.81] (e(t) = erfc(z) e^(z^2) (1 + 2 z) varies
// little over it, so its coefficients stay small next to its value). z^2 = zh^2 + (z - zh)(z + zh) with zh = z cut
// to half its bits, so zh^2 is exact and exp sees z^2 without its rounding error (which
// would cost z^2 ulp in the tail). With f = e(t) / (1 + 2 z) and exp(-z^2) = (1 + pm1) 2^n, the
// result is (f + f pm1) 2^n: no rounding of 1 + pm1 on its own, the power of two exact
// (or, for a subnormal result, the one rounding).
template <class T>
GC_INLINE T erfc_tail(T z) {
  using V = Traits<T>;
  z = z > V::erfc_max ? V::erfc_max : z;
  const T zh = from_bits<T>(to_bits(z) & V::split_mask);
  const ExpParts<T> e = exp_split(-(zh * zh), -((z - zh) * (z + zh)));
  const T t = (z - T(kErfcK)) / (z + T(kErfcK));
  const T f = poly(t, Coeffs<T>::erfc_e) / (T(1) + T(2) * z);
  return (f + f * e.pm1) * e.s1 * e.s2;
}

template <class T>
GC_INLINE T erf_small(T x) {
  return x + x * poly(x * x, Coeffs<T>::erf_q);
}

template <class T>
GC_INLINE T erf(T x) {
  const T ax = x < T(0) ? -x : x;
  const T big = T(1) - erfc_tail(ax);
  return ax < T(kErfSmall) ? erf_small(x) : copysign_of(big, x);
}

// Full relative accuracy in the right tail (GELU's left tail needs it).
template <class T>
GC_INLINE T erfc(T x) {
  const T ax = x < T(0) ? -x : x;
  const T tail = erfc_tail(ax);
  const T y = x > T(0) ? tail : T(2) - tail;  // NaN: 2 - NaN
  return ax < T(kErfcSmall) ? T(1) - erf_small(x) : y;
}

}  // namespace vmath

// ------------------------------------------------------------------------- arrays

enum class VFn { exp, expm1, log1p, tanh, erf, erfc };

// "exp", "expm1", "log1p", "tanh", "erf", "erfc"; throws std::invalid_argument naming the valid ones.
VFn parse_vfn(const std::string& name);

// y[i] = f(x[i]) for i < n; y may be x (any other overlap is the caller's to refuse).
// generic: run the baseline (SSE2 on x86-64) code even where the CPU has AVX2 + FMA, so
// tests can check both paths; the default picks the widest the CPU has.
template <class T>
void vmath_apply(VFn f, const T* x, T* y, index_t n, bool generic = false);

}  // namespace gc
