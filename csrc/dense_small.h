// Small Dense layers' forward without the BLAS (the compiled plan's tiny networks).
#pragma once
#include "activation.h"

namespace gc {

// A small Dense layer's forward, Y (rows, out) = act(X (rows, in) W^T + b) with W (out, in)
// and Z (the pre-activation, when act is not the identity) as dense_forward writes them,
// for layers too small for the BLAS call to pay for its fixed costs (the compiled plan's
// tiny networks). Each output is one FMA chain over k in order, then + b: the numbers of
// the BLAS's blocked kernel (dense_forward) for these shapes. Returns false (nothing
// written) where it does not apply: no AVX-512, a dimension above 64, or a shape the BLAS
// runs through its own small-matrix kernel (another summation order; dense_forward then
// keeps the eager path's numbers).
template <class T>
bool dense_forward_small(const T* X, const T* W, const T* b, T* Y, T* Z, index_t rows, index_t in, index_t out,
                         Act act, double alpha);

// The weight gradient dW (out, in) (+)= dY^T X of a small layer (in, out <= 64), dY
// (batch, out) and X (batch, in) row-major: each value one FMA chain over the batch rows
// in order, added to dW when accumulate (dW + sum). Returns false (nothing written) where
// it does not apply.
template <class T>
bool dense_backward_dw_small(const T* X, const T* dY, T* dW, index_t batch, index_t in, index_t out,
                             bool accumulate);

// dX (batch, in) = dY (batch, out) W (out, in) of a small layer: each value one FMA chain
// over the outputs in order. Returns false (nothing written) where it does not apply.
template <class T>
bool dense_backward_dx_small(const T* dY, const T* W, T* dX, index_t batch, index_t in, index_t out);

// The small kernels' switch (on by default; off: every caller takes the BLAS path, for
// tests of the portable path). dense_small_enabled: on and the CPU has AVX-512F.
void set_dense_small(bool on);
bool dense_small_enabled();

}  // namespace gc
