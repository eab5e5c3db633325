// Element-wise activations, PReLU and the row-wise softmax family.
//
// Layout of this file:
//   * one struct per kind with a scalar forward and backward (the math lives here, once);
//   * range kernels: a loop per kind under `#pragma omp simd`, reached through
//     GC_SIMD_DISPATCH (simd.h) so an AVX2/FMA clone is picked at run time;
//   * drivers that split the work into contiguous chunks, one per thread, above the
//     grain. The OpenMP region (parallel_for) sits in the driver and calls the cloned
//     range kernel, so the parallel path runs the dispatched clone too (an outlined
//     OpenMP body inside a cloned function would be compiled for the baseline only).
//
// NaN: every kind maps a NaN input to NaN (relu too, as in PyTorch), because the
// comparisons are written so that NaN falls through to an arithmetic branch.
//
// exp, expm1, tanh, erfc and log1p come from vmath.h (vectorised, within a few ulp of
// libm), so the loops of the transcendental kinds vectorise too.
#include "activation.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "simd.h"
#include "vmath.h"


namespace gc {

// ------------------------------------------------------------------------------ names

namespace {

struct NamedAct {
  const char* name;
  Act kind;
};

// Canonical names in enum order, then the aliases.
constexpr NamedAct kCanonical[] = {
    {"identity", Act::identity}, {"relu", Act::relu},       {"leaky_relu", Act::leaky_relu},
    {"elu", Act::elu},           {"selu", Act::selu},       {"sigmoid", Act::sigmoid},
    {"tanh", Act::tanh},         {"silu", Act::silu},       {"gelu", Act::gelu},
    {"gelu_tanh", Act::gelu_tanh}, {"softplus", Act::softplus},
};
constexpr NamedAct kAliases[] = {{"linear", Act::identity}, {"swish", Act::silu}};

}  // namespace

// Every name parse_activation accepts, canonical names first. Not in activation.h (whose
// API is fixed); bind_activation.cpp declares it to serve _C.activation_names().
const std::vector<std::string>& activation_name_list() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& e : kCanonical) v.emplace_back(e.name);
    for (const auto& e : kAliases) v.emplace_back(e.name);
    return v;
  }();
  return names;
}

Act parse_activation(const std::string& name) {
  for (const auto& e : kCanonical)
    if (name == e.name) return e.kind;
  for (const auto& e : kAliases)
    if (name == e.name) return e.kind;
  std::string valid;
  for (const auto& n : activation_name_list()) valid += (valid.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown activation '" + name + "'; valid names: " + valid);
}

// ------------------------------------------------------------------------ scalar math

namespace {

constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSqrtHalf = 0.70710678118654752440084436210485;      // 1/sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267793994605993438;    // 1/sqrt(2 pi)
constexpr double kSqrt2OverPi = 0.79788456080286535587989211986876;   // sqrt(2/pi)
constexpr double kGeluCubic = 0.044715;
constexpr double kSoftplusThreshold = 20.0;

// Logistic function split so that neither branch overflows: with e = exp(-|x|) in (0, 1],
// sigma(|x|) = 1/(1+e) and sigma(-|x|) = e/(1+e). Returns sigma(x) and sigma(-x) = 1 - sigma(x)
// without the cancellation of computing 1 - sigma(x) directly.
template <class T>
struct Logistic {
  T p;  // sigma(x)
  T q;  // 1 - sigma(x)
};

template <class T>
GC_INLINE Logistic<T> logistic(T x) {
  const T e = vmath::exp(-std::fabs(x));
  const T r = T(1) / (T(1) + e);
  const T small = e * r;
  const bool pos = x >= T(0);
  return {pos ? r : small, pos ? small : r};
}

// Each kind: fwd(x, alpha) -> y; bwd(x, y, dy, alpha) -> dx. bwd reads x or y, whichever
// PyTorch's backward reads (y for sigmoid and tanh, x otherwise).
template <class T>
struct Identity {
  static GC_INLINE T fwd(T x, T) { return x; }
  static GC_INLINE T bwd(T, T, T dy, T) { return dy; }
};

template <class T>
struct Relu {
  // x < 0 -> 0; NaN fails the test and passes through.
  static GC_INLINE T fwd(T x, T) { return x < T(0) ? T(0) : x; }
  static GC_INLINE T bwd(T x, T, T dy, T) { return x > T(0) ? dy : T(0); }
};

template <class T>
struct LeakyRelu {
  static GC_INLINE T fwd(T x, T a) { return x > T(0) ? x : a * x; }
  static GC_INLINE T bwd(T x, T, T dy, T a) { return x > T(0) ? dy : a * dy; }
};

template <class T>
struct Elu {
  static GC_INLINE T fwd(T x, T a) { return x > T(0) ? x : a * vmath::expm1(x); }
  static GC_INLINE T bwd(T x, T, T dy, T a) { return x > T(0) ? dy : dy * (a * vmath::exp(x)); }
};

template <class T>
struct Selu {
  static GC_INLINE T fwd(T x, T) {
    return T(kSeluScale) * (x > T(0) ? x : T(kSeluAlpha) * vmath::expm1(x));
  }
  static GC_INLINE T bwd(T x, T, T dy, T) {
    return x > T(0) ? dy * T(kSeluScale) : dy * (T(kSeluScale * kSeluAlpha) * vmath::exp(x));
  }
};

template <class T>
struct Sigmoid {
  static GC_INLINE T fwd(T x, T) { return logistic(x).p; }
  static GC_INLINE T bwd(T, T y, T dy, T) { return dy * ((T(1) - y) * y); }
};

template <class T>
struct Tanh {
  static GC_INLINE T fwd(T x, T) { return vmath::tanh(x); }
  static GC_INLINE T bwd(T, T y, T dy, T) { return dy * (T(1) - y * y); }
};

template <class T>
struct Silu {
  static GC_INLINE T fwd(T x, T) { return x * logistic(x).p; }
  // d/dx x s(x) = s (1 + x (1 - s)).
  static GC_INLINE T bwd(T x, T, T dy, T) {
    const Logistic<T> s = logistic(x);
    return dy * (s.p * (T(1) + x * s.q));
  }
};

template <class T>
struct Gelu {
  // 0.5 x (1 + erf(x/sqrt2)) written with erfc, which keeps full relative accuracy in the
  // left tail where 1 + erf(.) cancels.
  static GC_INLINE T fwd(T x, T) { return T(0.5) * x * vmath::erfc(-x * T(kSqrtHalf)); }
  static GC_INLINE T bwd(T x, T, T dy, T) {
    const T cdf = T(0.5) * vmath::erfc(-x * T(kSqrtHalf));
    const T pdf = T(kInvSqrt2Pi) * vmath::exp(T(-0.5) * x * x);
    return dy * (cdf + x * pdf);
  }
};

template <class T>
struct GeluTanh {
  // 0.5 x (1 + tanh(u)) = x sigma(2u), u = sqrt(2/pi) (x + 0.044715 x^3); the logistic form
  // has no cancellation for negative x.
  static GC_INLINE T inner(T x) { return T(kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x); }
  static GC_INLINE T fwd(T x, T) { return x * logistic(T(2) * inner(x)).p; }
  // d/dx = s + 2 x s (1 - s) u'. For huge |x|, s (1 - s) underflows to 0 while u' overflows;
  // the product is then 0, not 0 * inf.
  static GC_INLINE T bwd(T x, T, T dy, T) {
    const Logistic<T> s = logistic(T(2) * inner(x));
    const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * x * x);
    const T ss = s.p * s.q;
    const T tail = ss == T(0) ? T(0) : T(2) * x * ss * du;
    return dy * (s.p + tail);
  }
};

template <class T>
struct Softplus {
  // PyTorch (beta 1, threshold 20): x > 20 -> x, else log(1 + exp(x)), here in the form
  // max(x, 0) + log1p(exp(-|x|)) that never overflows.
  static GC_INLINE T fwd(T x, T) {
    const T smooth = vmath::log1p(vmath::exp(-std::fabs(x))) + (x > T(0) ? x : T(0));
    return x > T(kSoftplusThreshold) ? x : smooth;
  }
  static GC_INLINE T bwd(T x, T, T dy, T) {
    return x > T(kSoftplusThreshold) ? dy : dy * logistic(x).p;
  }
};

// --------------------------------------------------------------------- range kernels

template <template <class> class Op, class T>
GC_INLINE void map_forward(const T* x, T* y, index_t n, T alpha) {
  // y may alias x: every iteration reads and writes only its own index.
#pragma omp simd
  for (index_t i = 0; i < n; ++i) y[i] = Op<T>::fwd(x[i], alpha);
}

template <template <class> class Op, class T>
GC_INLINE void map_backward(const T* x, const T* y, const T* dy, T* dx, index_t n, T alpha) {
#pragma omp simd
  for (index_t i = 0; i < n; ++i) dx[i] = Op<T>::bwd(x[i], y[i], dy[i], alpha);
}

template <class T>
GC_INLINE void forward_range(Act kind, const T* x, T* y, index_t n, T a) {
  switch (kind) {
    case Act::identity:
      if (x != y) std::memcpy(y, x, sizeof(T) * static_cast<size_t>(n));
      break;
    case Act::relu: map_forward<Relu>(x, y, n, a); break;
    case Act::leaky_relu: map_forward<LeakyRelu>(x, y, n, a); break;
    case Act::elu: map_forward<Elu>(x, y, n, a); break;
    case Act::selu: map_forward<Selu>(x, y, n, a); break;
    case Act::sigmoid: map_forward<Sigmoid>(x, y, n, a); break;
    case Act::tanh: map_forward<Tanh>(x, y, n, a); break;
    case Act::silu: map_forward<Silu>(x, y, n, a); break;
    case Act::gelu: map_forward<Gelu>(x, y, n, a); break;
    case Act::gelu_tanh: map_forward<GeluTanh>(x, y, n, a); break;
    case Act::softplus: map_forward<Softplus>(x, y, n, a); break;
  }
}

template <class T>
GC_INLINE void backward_range(Act kind, const T* x, const T* y, const T* dy, T* dx, index_t n, T a) {
  switch (kind) {
    case Act::identity:
      if (dx != dy) std::memcpy(dx, dy, sizeof(T) * static_cast<size_t>(n));
      break;
    case Act::relu: map_backward<Relu>(x, y, dy, dx, n, a); break;
    case Act::leaky_relu: map_backward<LeakyRelu>(x, y, dy, dx, n, a); break;
    case Act::elu: map_backward<Elu>(x, y, dy, dx, n, a); break;
    case Act::selu: map_backward<Selu>(x, y, dy, dx, n, a); break;
    case Act::sigmoid: map_backward<Sigmoid>(x, y, dy, dx, n, a); break;
    case Act::tanh: map_backward<Tanh>(x, y, dy, dx, n, a); break;
    case Act::silu: map_backward<Silu>(x, y, dy, dx, n, a); break;
    case Act::gelu: map_backward<Gelu>(x, y, dy, dx, n, a); break;
    case Act::gelu_tanh: map_backward<GeluTanh>(x, y, dy, dx, n, a); break;
    case Act::softplus: map_backward<Softplus>(x, y, dy, dx, n, a); break;
  }
}

// Row-wise softmax family over rows [0, rows) of width cols. Sums are accumulated in
// double (for float too): cheap next to the exp, and it keeps wide rows accurate.
template <class T>
GC_INLINE T row_max(const T* x, index_t cols) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (index_t j = 0; j < cols; ++j) m = x[j] > m ? x[j] : m;
  return m;
}

template <class T>
GC_INLINE void softmax_rows(const T* x, T* y, index_t rows, index_t cols) {
  for (index_t i = 0; i < rows; ++i) {
    const T* xr = x + i * cols;
    T* yr = y + i * cols;
    const T m = row_max(xr, cols);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (index_t j = 0; j < cols; ++j) {
      const T e = vmath::exp(xr[j] - m);
      yr[j] = e;
      s += static_cast<double>(e);
    }
    const T inv = static_cast<T>(1.0 / s);
#pragma omp simd
    for (index_t j = 0; j < cols; ++j) yr[j] *= inv;
  }
}

template <class T>
GC_INLINE void log_softmax_rows(const T* x, T* y, index_t rows, index_t cols) {
  for (index_t i = 0; i < rows; ++i) {
    const T* xr = x + i * cols;
    T* yr = y + i * cols;
    const T m = row_max(xr, cols);
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (index_t j = 0; j < cols; ++j) s += static_cast<double>(vmath::exp(xr[j] - m));
    const T log_s = static_cast<T>(std::log(s));
#pragma omp simd
    for (index_t j = 0; j < cols; ++j) yr[j] = (xr[j] - m) - log_s;
  }
}

// dx = y (dy - <dy, y>); dx may alias dy (the dot is taken first).
template <class T>
GC_INLINE void softmax_backward_rows(const T* y, const T* dy, T* dx, index_t rows, index_t cols) {
  for (index_t i = 0; i < rows; ++i) {
    const T* yr = y + i * cols;
    const T* gr = dy + i * cols;
    T* dr = dx + i * cols;
    double dot = 0.0;
#pragma omp simd reduction(+ : dot)
    for (index_t j = 0; j < cols; ++j) dot += static_cast<double>(gr[j]) * static_cast<double>(yr[j]);
    const T d = static_cast<T>(dot);
#pragma omp simd
    for (index_t j = 0; j < cols; ++j) dr[j] = yr[j] * (gr[j] - d);
  }
}

// dx = dy - exp(y) sum(dy).
template <class T>
GC_INLINE void log_softmax_backward_rows(const T* y, const T* dy, T* dx, index_t rows, index_t cols) {
  for (index_t i = 0; i < rows; ++i) {
    const T* yr = y + i * cols;
    const T* gr = dy + i * cols;
    T* dr = dx + i * cols;
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (index_t j = 0; j < cols; ++j) s += static_cast<double>(gr[j]);
    const T st = static_cast<T>(s);
#pragma omp simd
    for (index_t j = 0; j < cols; ++j) dr[j] = gr[j] - vmath::exp(yr[j]) * st;
  }
}

// PReLU, rows [0, rows) of width cols; slope a[j] per column.
template <class T>
GC_INLINE void prelu_rows(const T* x, const T* a, T* y, index_t rows, index_t cols) {
  for (index_t i = 0; i < rows; ++i) {
    const T* xr = x + i * cols;
    T* yr = y + i * cols;
#pragma omp simd
    for (index_t j = 0; j < cols; ++j) yr[j] = xr[j] > T(0) ? xr[j] : a[j] * xr[j];
  }
}

template <class T>
GC_INLINE void prelu_flat(const T* x, T a, T* y, index_t n) {
#pragma omp simd
  for (index_t i = 0; i < n; ++i) y[i] = x[i] > T(0) ? x[i] : a * x[i];
}

// Columns [j0, j1) of rows [0, rows): dx (if given) and acc[j - j0] += dy * x where x <= 0
// (NaN x contributes NaN, as in PyTorch).
template <class T>
GC_INLINE void prelu_backward_block(const T* x, const T* a, const T* dy, T* dx, double* acc, index_t rows,
                                    index_t cols, index_t j0, index_t j1) {
  for (index_t i = 0; i < rows; ++i) {
    const T* xr = x + i * cols;
    const T* gr = dy + i * cols;
    if (dx) {
      T* dr = dx + i * cols;
#pragma omp simd
      for (index_t j = j0; j < j1; ++j) {
        dr[j] = xr[j] > T(0) ? gr[j] : a[j] * gr[j];
        acc[j - j0] += xr[j] > T(0) ? 0.0 : static_cast<double>(gr[j]) * static_cast<double>(xr[j]);
      }
    } else {
#pragma omp simd
      for (index_t j = j0; j < j1; ++j)
        acc[j - j0] += xr[j] > T(0) ? 0.0 : static_cast<double>(gr[j]) * static_cast<double>(xr[j]);
    }
  }
}

template <class T>
GC_INLINE void prelu_backward_dx_rows(const T* x, const T* a, const T* dy, T* dx, index_t rows, index_t cols) {
  for (index_t i = 0; i < rows; ++i) {
    const T* xr = x + i * cols;
    const T* gr = dy + i * cols;
    T* dr = dx + i * cols;
#pragma omp simd
    for (index_t j = 0; j < cols; ++j) dr[j] = xr[j] > T(0) ? gr[j] : a[j] * gr[j];
  }
}

// One shared slope: dx (if given) and the returned sum of dy * x where x <= 0.
template <class T>
GC_INLINE double prelu_backward_flat(const T* x, T a, const T* dy, T* dx, index_t n) {
  if (dx) {
#pragma omp simd
    for (index_t i = 0; i < n; ++i) dx[i] = x[i] > T(0) ? dy[i] : a * dy[i];
  }
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (index_t i = 0; i < n; ++i) s += x[i] > T(0) ? 0.0 : static_cast<double>(dy[i]) * static_cast<double>(x[i]);
  return s;
}

// ------------------------------------------------ dispatched (cloned) non-template entry points

GC_SIMD_DISPATCH(void, fwd_k, forward_range, (Act k, const T* x, T* y, index_t n, T a), (k, x, y, n, a))
GC_SIMD_DISPATCH(void, bwd_k, backward_range, (Act k, const T* x, const T* y, const T* g, T* dx, index_t n, T a),
                 (k, x, y, g, dx, n, a))
GC_SIMD_DISPATCH(void, softmax_k, softmax_rows, (const T* x, T* y, index_t r, index_t c), (x, y, r, c))
GC_SIMD_DISPATCH(void, log_softmax_k, log_softmax_rows, (const T* x, T* y, index_t r, index_t c), (x, y, r, c))
GC_SIMD_DISPATCH(void, softmax_bwd_k, softmax_backward_rows, (const T* y, const T* g, T* dx, index_t r, index_t c),
                 (y, g, dx, r, c))
GC_SIMD_DISPATCH(void, log_softmax_bwd_k, log_softmax_backward_rows,
                 (const T* y, const T* g, T* dx, index_t r, index_t c), (y, g, dx, r, c))
GC_SIMD_DISPATCH(void, prelu_rows_k, prelu_rows, (const T* x, const T* a, T* y, index_t r, index_t c), (x, a, y, r, c))
GC_SIMD_DISPATCH(void, prelu_flat_k, prelu_flat, (const T* x, T a, T* y, index_t n), (x, a, y, n))
GC_SIMD_DISPATCH(void, prelu_bwd_block_k, prelu_backward_block,
                 (const T* x, const T* a, const T* g, T* dx, double* acc, index_t r, index_t c, index_t j0, index_t j1),
                 (x, a, g, dx, acc, r, c, j0, j1))
GC_SIMD_DISPATCH(void, prelu_bwd_dx_k, prelu_backward_dx_rows, (const T* x, const T* a, const T* g, T* dx, index_t r, index_t c),
                 (x, a, g, dx, r, c))
GC_SIMD_DISPATCH(double, prelu_bwd_flat_k, prelu_backward_flat, (const T* x, T a, const T* g, T* dx, index_t n),
                 (x, a, g, dx, n))

// ---------------------------------------------------------------------------- drivers

// Most partial sums a reduction keeps on the stack (one per chunk).
constexpr int kMaxChunks = 16;

// Values per thread before a second thread pays for its wake-up (parallel.h), measured
// with benchmarks/threads.py on the 2-core EPYC VM (float32, 1 vs 2 threads):
// - memory-bound passes (relu / leaky_relu / identity / prelu, the backward of sigmoid
//   and tanh, which read y; the softmax backward): ~10 values per ns on one thread, so
//   the ~50 us wake-up is repaid only from ~2M values (relu fwd 1M: 106 us on 1 thread,
//   112 us on 2; 2M: 264 us vs 167 us);
// - transcendental kinds (exp / tanh / erfc per value: elu, selu, sigmoid, tanh, silu,
//   gelu, softplus forward and backward, softmax forward): with the vector math of
//   vmath.h, 0.5-2.5 ns per float32 value and 1.5-7 per float64 one (they were 5-15 with
//   libm), against a ~60 us fork on the Xeon VM: float32 64K runs 33-150 us on 1 thread
//   and 2 threads lose there (elu bwd 33 us vs 82, silu fwd 41 vs 44), while from 256K
//   they win (softplus fwd 610 vs 369 us, softmax fwd 270 vs 181, elu fwd 240 vs 184).
//   float64 values cost about twice as much, so their grain is half.
constexpr index_t kMemoryGrain = index_t(1) << 20;
constexpr index_t kTranscendentalGrain = index_t(1) << 17;  // float32; float64: half

template <class T>
constexpr index_t transcendental_grain() {
  return sizeof(T) == sizeof(double) ? kTranscendentalGrain / 2 : kTranscendentalGrain;
}

// The grain of one activation kind's forward or backward pass over T values.
template <class T>
inline index_t grain_of(Act kind, bool backward) {
  const index_t transcendental = transcendental_grain<T>();
  switch (kind) {
    case Act::identity:
    case Act::relu:
    case Act::leaky_relu:
      return kMemoryGrain;
    case Act::sigmoid:
    case Act::tanh:
      return backward ? kMemoryGrain : transcendental;  // backward: dy * f(y), no exp
    default:
      return transcendental;
  }
}
// Columns per block in the per-column PReLU slope reduction.
constexpr index_t kColBlock = 256;

// Start of chunk c of nchunks over n items, rounded down to a multiple of `align` so
// threads do not share cache lines (the last chunk ends at n).
inline index_t chunk_start(index_t n, int nchunks, int c, index_t align) {
  if (c >= nchunks) return n;
  const index_t s = static_cast<index_t>((static_cast<long double>(n) * c) / nchunks);
  return align > 1 ? s / align * align : s;
}

inline int chunks_for(index_t work, index_t items, index_t grain) {
  int t = threads_for(work, grain);
  if (t > kMaxChunks) t = kMaxChunks;
  if (items < t) t = static_cast<int>(items);
  return t < 1 ? 1 : t;
}

// Chunks of a reduction over `work` values in `items` pieces (parallel.h): one per
// kMemoryGrain, at most kMaxChunks, whatever the thread count.
inline int reduction_chunks(index_t work, index_t items) { return reduction_units(work, items, kMemoryGrain, kMaxChunks); }

// Calls f(lo, hi) over [0, n) split into contiguous chunks, in parallel above the grain
// (work counts elements, so a row-wise caller passes rows * cols; grain: the family's).
template <class F>
void for_chunks(index_t n, index_t work, index_t grain, index_t align, F&& f) {
  const int nc = chunks_for(work, n, grain);
  if (nc <= 1) {
    f(index_t(0), n);
    return;
  }
  parallel_for(nc, nc, [&](index_t c) {
    f(chunk_start(n, nc, int(c), align), chunk_start(n, nc, int(c) + 1, align));
  });
}

}  // namespace

// --------------------------------------------------------------------------- public API

template <class T>
void activation_forward(Act kind, const T* x, T* y, index_t n, double alpha) {
  if (n <= 0 || (kind == Act::identity && x == y)) return;
  const T a = static_cast<T>(alpha);
  for_chunks(n, n, grain_of<T>(kind, false), 16, [&](index_t lo, index_t hi) { fwd_k(kind, x + lo, y + lo, hi - lo, a); });
}

template <class T>
void activation_backward(Act kind, const T* x, const T* y, const T* dy, T* dx, index_t n, double alpha) {
  if (n <= 0 || (kind == Act::identity && dx == dy)) return;
  const T a = static_cast<T>(alpha);
  for_chunks(n, n, grain_of<T>(kind, true), 16, [&](index_t lo, index_t hi) {
    bwd_k(kind, x + lo, y + lo, dy + lo, dx + lo, hi - lo, a);
  });
}

template <class T>
void prelu_forward(const T* x, const T* a, T* y, index_t rows, index_t cols, index_t a_size) {
  const index_t n = rows * cols;
  if (n <= 0) return;
  if (a_size == 1) {
    const T a0 = a[0];
    for_chunks(n, n, kMemoryGrain, 16, [&](index_t lo, index_t hi) { prelu_flat_k(x + lo, a0, y + lo, hi - lo); });
  } else {
    for_chunks(rows, n, kMemoryGrain, 1, [&](index_t lo, index_t hi) {
      prelu_rows_k(x + lo * cols, a, y + lo * cols, hi - lo, cols);
    });
  }
}

template <class T>
void prelu_backward(const T* x, const T* a, const T* dy, T* dx, T* da, index_t rows, index_t cols,
                    index_t a_size, bool accumulate) {
  const index_t n = rows > 0 && cols > 0 ? rows * cols : 0;

  if (a_size == 1) {
    const T a0 = a[0];
    if (!da) {
      if (dx && n > 0)
        for_chunks(n, n, kMemoryGrain, 16, [&](index_t lo, index_t hi) { prelu_bwd_flat_k(x + lo, a0, dy + lo, dx + lo, hi - lo); });
      return;
    }
    // Partial sums per chunk, added in chunk order: the result depends neither on the
    // thread count nor on how the threads are scheduled.
    double part[kMaxChunks] = {};
    const int nc = reduction_chunks(n, n);
    if (nc <= 1) {
      part[0] = n > 0 ? prelu_bwd_flat_k(x, a0, dy, dx, n) : 0.0;
    } else {
      parallel_for(nc, threads_for(n, kMemoryGrain), [&](index_t c) {
        const index_t lo = chunk_start(n, nc, int(c), 16), hi = chunk_start(n, nc, int(c) + 1, 16);
        part[c] = prelu_bwd_flat_k(x + lo, a0, dy + lo, dx ? dx + lo : nullptr, hi - lo);
      });
    }
    double total = 0.0;
    for (int c = 0; c < (nc > 1 ? nc : 1); ++c) total += part[c];
    da[0] = accumulate ? static_cast<T>(static_cast<double>(da[0]) + total) : static_cast<T>(total);
    return;
  }

  // One slope per column (a_size == cols).
  if (!da) {
    if (dx && n > 0)
      for_chunks(rows, n, kMemoryGrain, 1, [&](index_t lo, index_t hi) {
        prelu_bwd_dx_k(x + lo * cols, a, dy + lo * cols, dx + lo * cols, hi - lo, cols);
      });
    return;
  }
  auto store = [&](index_t j, double s) {
    da[j] = accumulate ? static_cast<T>(static_cast<double>(da[j]) + s) : static_cast<T>(s);
  };
  const index_t nblocks = (cols + kColBlock - 1) / kColBlock;
  const int nt = reduction_chunks(n, rows);  // row chunks: from the size, not the threads
  const int threads = chunks_for(n, rows, kMemoryGrain);
  if (nt <= 1 || nblocks > 1) {
    // Parallel over column blocks (each thread owns its slice of da), or serial.
    const int nb = threads < nblocks ? threads : static_cast<int>(nblocks);
    parallel_for(nblocks, nb, [&](index_t blk) {
      const index_t j0 = blk * kColBlock;
      const index_t j1 = j0 + kColBlock < cols ? j0 + kColBlock : cols;
      double acc[kColBlock] = {};
      if (rows > 0) prelu_bwd_block_k(x, a, dy, dx, acc, rows, cols, j0, j1);
      for (index_t j = j0; j < j1; ++j) store(j, acc[j - j0]);
    });
    return;
  }
  // Few columns, many rows: chunks of rows, each with its own partial sums.
  double part[kMaxChunks][kColBlock];
  parallel_for(nt, threads, [&](index_t c) {
    const index_t lo = chunk_start(rows, nt, int(c), 1), hi = chunk_start(rows, nt, int(c) + 1, 1);
    for (index_t j = 0; j < cols; ++j) part[c][j] = 0.0;
    prelu_bwd_block_k(x + lo * cols, a, dy + lo * cols, dx ? dx + lo * cols : nullptr, part[c], hi - lo, cols,
                      0, cols);
  });
  for (index_t j = 0; j < cols; ++j) {
    double s = 0.0;
    for (int c = 0; c < nt; ++c) s += part[c][j];
    store(j, s);
  }
}

template <class T>
void softmax_forward(const T* x, T* y, index_t rows, index_t cols) {
  if (rows <= 0 || cols <= 0) return;
  for_chunks(rows, rows * cols, transcendental_grain<T>(), 1, [&](index_t lo, index_t hi) {
    softmax_k(x + lo * cols, y + lo * cols, hi - lo, cols);
  });
}

template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, index_t rows, index_t cols) {
  if (rows <= 0 || cols <= 0) return;
  for_chunks(rows, rows * cols, kMemoryGrain, 1, [&](index_t lo, index_t hi) {
    softmax_bwd_k(y + lo * cols, dy + lo * cols, dx + lo * cols, hi - lo, cols);
  });
}

template <class T>
void log_softmax_forward(const T* x, T* y, index_t rows, index_t cols) {
  if (rows <= 0 || cols <= 0) return;
  for_chunks(rows, rows * cols, transcendental_grain<T>(), 1, [&](index_t lo, index_t hi) {
    log_softmax_k(x + lo * cols, y + lo * cols, hi - lo, cols);
  });
}

template <class T>
void log_softmax_backward(const T* y, const T* dy, T* dx, index_t rows, index_t cols) {
  if (rows <= 0 || cols <= 0) return;
  for_chunks(rows, rows * cols, kMemoryGrain, 1, [&](index_t lo, index_t hi) {
    log_softmax_bwd_k(y + lo * cols, dy + lo * cols, dx + lo * cols, hi - lo, cols);
  });
}

#define GC_ACT_INSTANTIATE(T)                                                                              \
  template void activation_forward<T>(Act, const T*, T*, index_t, double);                                \
  template void activation_backward<T>(Act, const T*, const T*, const T*, T*, index_t, double);           \
  template void prelu_forward<T>(const T*, const T*, T*, index_t, index_t, index_t);                      \
  template void prelu_backward<T>(const T*, const T*, const T*, T*, T*, index_t, index_t, index_t, bool); \
  template void softmax_forward<T>(const T*, T*, index_t, index_t);                                       \
  template void softmax_backward<T>(const T*, const T*, T*, index_t, index_t);                            \
  template void log_softmax_forward<T>(const T*, T*, index_t, index_t);                                   \
  template void log_softmax_backward<T>(const T*, const T*, T*, index_t, index_t);

GC_ACT_INSTANTIATE(float)
GC_ACT_INSTANTIATE(double)
#undef GC_ACT_INSTANTIATE

}  // namespace gc
