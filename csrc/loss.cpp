#include "loss.h"

#include <cmath>

#include "simd.h"
#include "vmath.h"

namespace gc {

namespace {

template <class T>
GC_INLINE double mse_body(const T* p, const T* t, T* g, index_t n) {
  double s = 0.0;
  const T scale = T(2.0 / double(n));
  if (g) {
#pragma omp simd reduction(+ : s)
    for (index_t i = 0; i < n; ++i) {
      const T d = p[i] - t[i];
      s += double(d) * double(d);
      g[i] = scale * d;
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (index_t i = 0; i < n; ++i) {
      const double d = double(p[i]) - double(t[i]);
      s += d * d;
    }
  }
  return s / double(n);
}

// One element of BCE with logits: the loss term max(x, 0) - x t + log1p(e) and
// e = exp(-|x|) in (0, 1] (no overflow either way) for the gradient.
template <class T>
GC_INLINE T bce_term(T x, T t, T& e) {
  e = vmath::exp(-std::fabs(x));
  return (x > T(0) ? x : T(0)) - x * t + vmath::log1p(e);
}

template <class T>
GC_INLINE double bce_body(const T* x, const T* t, T* g, index_t n) {
  double s = 0.0;
  const T inv_n = T(1.0 / double(n));
  if (g) {
#pragma omp simd reduction(+ : s)
    for (index_t i = 0; i < n; ++i) {
      T e;
      s += double(bce_term(x[i], t[i], e));
      const T sig = x[i] >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
      g[i] = (sig - t[i]) * inv_n;
    }
  } else {
#pragma omp simd reduction(+ : s)
    for (index_t i = 0; i < n; ++i) {
      T e;
      s += double(bce_term(x[i], t[i], e));
    }
  }
  return s / double(n);
}

// log-sum-exp of one row and, optionally, softmax(row) / rows into g.
template <class T>
GC_INLINE double row_lse(const T* z, index_t classes, T* g, double inv_rows) {
  T m = z[0];
  for (index_t j = 1; j < classes; ++j) m = (z[j] > m || z[j] != z[j]) ? z[j] : m;
  double s = 0.0;
#pragma omp simd reduction(+ : s)
  for (index_t j = 0; j < classes; ++j) s += vmath::exp(double(z[j] - m));
  const double lse = double(m) + std::log(s);
  if (g) {
#pragma omp simd
    for (index_t j = 0; j < classes; ++j) g[j] = T(vmath::exp(double(z[j]) - lse) * inv_rows);
  }
  return lse;
}

template <class T>
GC_INLINE double ce_body(const T* z, const std::int64_t* labels, T* g, index_t rows, index_t classes, index_t* bad) {
  *bad = -1;
  for (index_t i = 0; i < rows; ++i) {
    if (labels[i] < 0 || labels[i] >= classes) {
      *bad = i;
      return 0.0;
    }
  }
  const double inv = 1.0 / double(rows);
  double s = 0.0;
  for (index_t i = 0; i < rows; ++i) {
    const T* zr = z + i * classes;
    T* gr = g ? g + i * classes : nullptr;
    const double lse = row_lse(zr, classes, gr, inv);
    s += lse - double(zr[labels[i]]);
    if (gr) gr[labels[i]] -= T(inv);
  }
  return s * inv;
}

template <class T>
GC_INLINE double ce_onehot_body(const T* z, const T* t, T* g, index_t rows, index_t classes) {
  const double inv = 1.0 / double(rows);
  double s = 0.0;
  for (index_t i = 0; i < rows; ++i) {
    const T* zr = z + i * classes;
    const T* tr = t + i * classes;
    T* gr = g ? g + i * classes : nullptr;
    const double lse = row_lse(zr, classes, gr, inv);
    double tsum = 0.0, dot = 0.0;
    for (index_t j = 0; j < classes; ++j) {
      tsum += double(tr[j]);
      dot += double(tr[j]) * double(zr[j]);
    }
    s += tsum * lse - dot;  // -sum_j t_j (z_j - lse)
    if (gr) {
      for (index_t j = 0; j < classes; ++j) gr[j] = T(double(gr[j]) * tsum - double(tr[j]) * inv);
    }
  }
  return s * inv;
}

GC_SIMD_DISPATCH(double, mse_any, mse_body, (const T* p, const T* t, T* g, index_t n), (p, t, g, n))
GC_SIMD_DISPATCH(double, bce_any, bce_body, (const T* p, const T* t, T* g, index_t n), (p, t, g, n))
GC_SIMD_DISPATCH(double, ce_any, ce_body, (const T* z, const std::int64_t* l, T* g, index_t r, index_t c, index_t* bad),
                 (z, l, g, r, c, bad))
GC_SIMD_DISPATCH(double, ce_onehot_any, ce_onehot_body, (const T* z, const T* t, T* g, index_t r, index_t c),
                 (z, t, g, r, c))

}  // namespace

template <class T>
double mse_loss(const T* pred, const T* target, T* grad, index_t n) {
  return mse_any(pred, target, grad, n);
}

template <class T>
double bce_with_logits_loss(const T* logits, const T* target, T* grad, index_t n) {
  return bce_any(logits, target, grad, n);
}

template <class T>
double cross_entropy_loss(const T* logits, const std::int64_t* labels, T* grad, index_t rows, index_t classes,
                          index_t* bad_row) {
  return ce_any(logits, labels, grad, rows, classes, bad_row);
}

template <class T>
double cross_entropy_onehot_loss(const T* logits, const T* target, T* grad, index_t rows, index_t classes) {
  return ce_onehot_any(logits, target, grad, rows, classes);
}

#define GC_INSTANTIATE(T)                                                                                       \
  template double mse_loss<T>(const T*, const T*, T*, index_t);                                                 \
  template double bce_with_logits_loss<T>(const T*, const T*, T*, index_t);                                     \
  template double cross_entropy_loss<T>(const T*, const std::int64_t*, T*, index_t, index_t, index_t*);          \
  template double cross_entropy_onehot_loss<T>(const T*, const T*, T*, index_t, index_t);
GC_INSTANTIATE(float)
GC_INSTANTIATE(double)
#undef GC_INSTANTIATE

}  // namespace gc
