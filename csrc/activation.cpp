// Element-wise activations and the row-wise softmax family.
//
// Each activation is a pair of scalar functions (value, derivative) applied by one loop
// template; the loop is instantiated inside GC_CLONES wrappers so the AVX2/FMA clone runs
// where the CPU has it. NaN propagates through every branch (comparisons with NaN are
// false, so each formula falls through to an arithmetic expression of x).
#include "activation.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "simd.h"

namespace gc {

namespace {

constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSqrt2OverPi = 0.79788456080286535587989211986876;
constexpr double kInvSqrt2 = 0.70710678118654752440084436210485;
constexpr double kInvSqrt2Pi = 0.39894228040143267793994605993438;
constexpr double kGeluCubic = 0.044715;
constexpr double kSoftplusThreshold = 20.0;

template <class T>
GC_INLINE T sigmoid(T x) {
  // exp of a non-positive argument only, so neither branch overflows
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  const T e = std::exp(x);
  return e / (T(1) + e);
}

template <class T>
struct Fn {
  static GC_INLINE T forward(Act k, T x, T a) {
    switch (k) {
      case Act::identity: return x;
      case Act::relu: return x > T(0) ? x : (x == x ? T(0) : x);
      case Act::leaky_relu: return x > T(0) ? x : a * x;
      case Act::elu: return x > T(0) ? x : a * std::expm1(x);
      case Act::selu: return T(kSeluScale) * (x > T(0) ? x : T(kSeluAlpha) * std::expm1(x));
      case Act::sigmoid: return sigmoid(x);
      case Act::tanh: return std::tanh(x);
      case Act::silu: return x * sigmoid(x);
      case Act::gelu: return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2)));
      case Act::gelu_tanh: return T(0.5) * x * (T(1) + std::tanh(T(kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x)));
      case Act::softplus:
        return x > T(kSoftplusThreshold) ? x : std::max(x, T(0)) + std::log1p(std::exp(-std::fabs(x)));
    }
    return x;
  }

  // derivative f'(x); y = f(x) is given for the kinds whose derivative is cheaper from it
  static GC_INLINE T derivative(Act k, T x, T y, T a) {
    switch (k) {
      case Act::identity: return T(1);
      case Act::relu: return x > T(0) ? T(1) : (x == x ? T(0) : x);
      case Act::leaky_relu: return x > T(0) ? T(1) : (x == x ? a : x);
      case Act::elu: return x > T(0) ? T(1) : a * std::exp(x);
      case Act::selu: return T(kSeluScale) * (x > T(0) ? T(1) : T(kSeluAlpha) * std::exp(x));
      case Act::sigmoid: return y * (T(1) - y);
      case Act::tanh: return T(1) - y * y;
      case Act::silu: {
        const T s = sigmoid(x);
        return s * (T(1) + x * (T(1) - s));
      }
      case Act::gelu:
        return T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2))) + x * T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
      case Act::gelu_tanh: {
        const T inner = T(kSqrt2OverPi) * (x + T(kGeluCubic) * x * x * x);
        const T t = std::tanh(inner);
        const T dinner = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * x * x);
        return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * dinner;
      }
      case Act::softplus: return x > T(kSoftplusThreshold) ? T(1) : sigmoid(x);
    }
    return T(1);
  }
};

// One loop per kind so the switch is hoisted out and each body vectorises on its own.
template <class T, Act K>
GC_INLINE void forward_loop(const T* x, T* y, index_t lo, index_t hi, T a) {
#pragma omp simd
  for (index_t i = lo; i < hi; ++i) y[i] = Fn<T>::forward(K, x[i], a);
}

template <class T, Act K>
GC_INLINE void backward_loop(const T* x, const T* y, const T* dy, T* dx, index_t lo, index_t hi, T a) {
#pragma omp simd
  for (index_t i = lo; i < hi; ++i) dx[i] = dy[i] * Fn<T>::derivative(K, x[i], y[i], a);
}

#define GC_FOR_EACH_ACT(M)                                                                               \
  M(identity) M(relu) M(leaky_relu) M(elu) M(selu) M(sigmoid) M(tanh) M(silu) M(gelu) M(gelu_tanh) \
  M(softplus)

template <class T>
GC_INLINE void forward_range(Act k, const T* x, T* y, index_t lo, index_t hi, T a) {
  switch (k) {
#define GC_CASE(name) \
  case Act::name: forward_loop<T, Act::name>(x, y, lo, hi, a); break;
    GC_FOR_EACH_ACT(GC_CASE)
#undef GC_CASE
  }
}

template <class T>
GC_INLINE void backward_range(Act k, const T* x, const T* y, const T* dy, T* dx, index_t lo, index_t hi, T a) {
  switch (k) {
#define GC_CASE(name) \
  case Act::name: backward_loop<T, Act::name>(x, y, dy, dx, lo, hi, a); break;
    GC_FOR_EACH_ACT(GC_CASE)
#undef GC_CASE
  }
}

GC_CLONES void forward_f(Act k, const float* x, float* y, index_t lo, index_t hi, float a) {
  forward_range(k, x, y, lo, hi, a);
}
GC_CLONES void forward_d(Act k, const double* x, double* y, index_t lo, index_t hi, double a) {
  forward_range(k, x, y, lo, hi, a);
}
GC_CLONES void backward_f(Act k, const float* x, const float* y, const float* dy, float* dx, index_t lo,
                          index_t hi, float a) {
  backward_range(k, x, y, dy, dx, lo, hi, a);
}
GC_CLONES void backward_d(Act k, const double* x, const double* y, const double* dy, double* dx, index_t lo,
                          index_t hi, double a) {
  backward_range(k, x, y, dy, dx, lo, hi, a);
}
void fwd(Act k, const float* x, float* y, index_t lo, index_t hi, double a) { forward_f(k, x, y, lo, hi, float(a)); }
void fwd(Act k, const double* x, double* y, index_t lo, index_t hi, double a) { forward_d(k, x, y, lo, hi, a); }
void bwd(Act k, const float* x, const float* y, const float* dy, float* dx, index_t lo, index_t hi, double a) {
  backward_f(k, x, y, dy, dx, lo, hi, float(a));
}
void bwd(Act k, const double* x, const double* y, const double* dy, double* dx, index_t lo, index_t hi, double a) {
  backward_d(k, x, y, dy, dx, lo, hi, a);
}

// Split [0, n) into contiguous chunks, one per thread, above the grain.
template <class F>
void parallel_chunks(index_t n, F body) {
  const int threads = threads_for(n);
  if (threads <= 1) {
    body(index_t(0), n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
#if defined(GC_HAVE_OPENMP)
    const index_t t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    const index_t t = 0, nt = 1;
#endif
    const index_t lo = n * t / nt, hi = n * (t + 1) / nt;
    body(lo, hi);
  }
}

// Row-wise loops share a helper that hands each thread whole rows.
template <class F>
void parallel_rows(index_t rows, index_t cols, F body) {
  const int threads = threads_for(rows * cols);
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
  for (index_t r = 0; r < rows; ++r) body(r);
}

// Row maximum that is NaN when the row holds a NaN (so NaN propagates to every output).
template <class T>
T row_max(const T* x, index_t cols) {
  T m = x[0];
  for (index_t j = 1; j < cols; ++j) m = (x[j] > m || x[j] != x[j]) ? x[j] : m;
  return m;
}

}  // namespace

Act parse_activation(const std::string& name) {
  if (name == "identity" || name == "linear" || name.empty()) return Act::identity;
  if (name == "relu") return Act::relu;
  if (name == "leaky_relu") return Act::leaky_relu;
  if (name == "elu") return Act::elu;
  if (name == "selu") return Act::selu;
  if (name == "sigmoid") return Act::sigmoid;
  if (name == "tanh") return Act::tanh;
  if (name == "silu" || name == "swish") return Act::silu;
  if (name == "gelu") return Act::gelu;
  if (name == "gelu_tanh") return Act::gelu_tanh;
  if (name == "softplus") return Act::softplus;
  throw std::invalid_argument("unknown activation '" + name +
                              "'; expected one of identity, linear, relu, leaky_relu, elu, selu, sigmoid, tanh, "
                              "silu, swish, gelu, gelu_tanh, softplus");
}

template <class T>
void activation_forward(Act kind, const T* x, T* y, index_t n, double alpha) {
  parallel_chunks(n, [&](index_t lo, index_t hi) { fwd(kind, x, y, lo, hi, alpha); });
}

template <class T>
void activation_backward(Act kind, const T* x, const T* y, const T* dy, T* dx, index_t n, double alpha) {
  parallel_chunks(n, [&](index_t lo, index_t hi) { bwd(kind, x, y, dy, dx, lo, hi, alpha); });
}

template <class T>
void prelu_forward(const T* x, const T* a, T* y, index_t rows, index_t cols, index_t a_size) {
  parallel_rows(rows, cols, [&](index_t r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    for (index_t j = 0; j < cols; ++j) {
      const T s = a[a_size == 1 ? 0 : j];
      yr[j] = xr[j] > T(0) ? xr[j] : s * xr[j];
    }
  });
}

template <class T>
void prelu_backward(const T* x, const T* a, const T* dy, T* dx, T* da, index_t rows, index_t cols, index_t a_size,
                    bool accumulate) {
  if (dx) {
    parallel_rows(rows, cols, [&](index_t r) {
      const T* xr = x + r * cols;
      const T* gr = dy + r * cols;
      T* dr = dx + r * cols;
      for (index_t j = 0; j < cols; ++j) dr[j] = xr[j] > T(0) ? gr[j] : a[a_size == 1 ? 0 : j] * gr[j];
    });
  }
  if (da) {
    // serial over rows, vectorised over columns: the slope gradient is a column reduction
    std::vector<double> acc(static_cast<size_t>(cols), 0.0);
    for (index_t r = 0; r < rows; ++r) {
      const T* xr = x + r * cols;
      const T* gr = dy + r * cols;
      for (index_t j = 0; j < cols; ++j) acc[j] += xr[j] > T(0) ? 0.0 : double(gr[j]) * double(xr[j]);
    }
    if (a_size == 1) {
      double total = 0.0;
      for (double v : acc) total += v;
      da[0] = accumulate ? T(da[0] + total) : T(total);
    } else {
      for (index_t j = 0; j < cols; ++j) da[j] = accumulate ? T(da[j] + acc[j]) : T(acc[j]);
    }
  }
}

template <class T>
void softmax_forward(const T* x, T* y, index_t rows, index_t cols) {
  parallel_rows(rows, cols, [&](index_t r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const T m = row_max(xr, cols);
    T s = 0;
    for (index_t j = 0; j < cols; ++j) s += (yr[j] = std::exp(xr[j] - m));
    const T inv = T(1) / s;
    for (index_t j = 0; j < cols; ++j) yr[j] *= inv;
  });
}

template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, index_t rows, index_t cols) {
  parallel_rows(rows, cols, [&](index_t r) {
    const T* yr = y + r * cols;
    const T* gr = dy + r * cols;
    T* dr = dx + r * cols;
    T dot = 0;
    for (index_t j = 0; j < cols; ++j) dot += yr[j] * gr[j];
    for (index_t j = 0; j < cols; ++j) dr[j] = yr[j] * (gr[j] - dot);
  });
}

template <class T>
void log_softmax_forward(const T* x, T* y, index_t rows, index_t cols) {
  parallel_rows(rows, cols, [&](index_t r) {
    const T* xr = x + r * cols;
    T* yr = y + r * cols;
    const T m = row_max(xr, cols);
    T s = 0;
    for (index_t j = 0; j < cols; ++j) s += std::exp(xr[j] - m);
    const T lse = m + std::log(s);
    for (index_t j = 0; j < cols; ++j) yr[j] = xr[j] - lse;
  });
}

template <class T>
void log_softmax_backward(const T* y, const T* dy, T* dx, index_t rows, index_t cols) {
  parallel_rows(rows, cols, [&](index_t r) {
    const T* yr = y + r * cols;
    const T* gr = dy + r * cols;
    T* dr = dx + r * cols;
    T total = 0;
    for (index_t j = 0; j < cols; ++j) total += gr[j];
    for (index_t j = 0; j < cols; ++j) dr[j] = gr[j] - std::exp(yr[j]) * total;
  });
}

#define GC_INSTANTIATE(T)                                                                                    \
  template void activation_forward<T>(Act, const T*, T*, index_t, double);                                   \
  template void activation_backward<T>(Act, const T*, const T*, const T*, T*, index_t, double);              \
  template void prelu_forward<T>(const T*, const T*, T*, index_t, index_t, index_t);                         \
  template void prelu_backward<T>(const T*, const T*, const T*, T*, T*, index_t, index_t, index_t, bool);    \
  template void softmax_forward<T>(const T*, T*, index_t, index_t);                                          \
  template void softmax_backward<T>(const T*, const T*, T*, index_t, index_t);                               \
  template void log_softmax_forward<T>(const T*, T*, index_t, index_t);                                      \
  template void log_softmax_backward<T>(const T*, const T*, T*, index_t, index_t);
GC_INSTANTIATE(float)
GC_INSTANTIATE(double)
#undef GC_INSTANTIATE

}  // namespace gc
