// Small Dense layers (in, out <= 64) without the BLAS: the compiled plan's forward and
// dense_backward's dW and dX, on AVX-512 CPUs where measured faster (dense_small.cpp).
#pragma once
#include "activation.h"

namespace gc {

// A small Dense layer's forward, Y (rows, out) = act(X (rows, in) W^T + b) with W (out, in)
// and Z (the pre-activation, when act is not the identity) as dense_forward writes them,
// for layers too small for the BLAS call to pay for its fixed costs (the compiled plan's
// tiny networks). Each output is one FMA chain over k in order, then + b: the numbers of
// the BLAS's blocked kernel (dense_forward) for most of these shapes, its small-matrix
// kernel's to rounding. Returns false (nothing written) where it does not apply: no
// AVX-512, a dimension above 64, or a shape where the BLAS was measured faster.
template <class T>
bool dense_forward_small(const T* X, const T* W, const T* b, T* Y, T* Z, index_t rows, index_t in, index_t out,
                         Act act, double alpha);

// The weight gradient dW (out, in) (+)= dY^T X of a small layer (in, out <= 64), dY
// (batch, out) and X (batch, in) row-major: each value one FMA chain over the batch rows
// in order, added to dW when accumulate (dW + sum). Returns false (nothing written) where
// it does not apply (as dense_forward_small).
template <class T>
bool dense_backward_dw_small(const T* X, const T* dY, T* dW, index_t batch, index_t in, index_t out,
                             bool accumulate);

// dX (batch, in) = dY (batch, out) W (out, in) of a small layer: each value one FMA chain
// over the outputs in order. Returns false (nothing written) where it does not apply.
template <class T>
bool dense_backward_dx_small(const T* dY, const T* W, T* dX, index_t batch, index_t in, index_t out);

// The small kernels' switch: automatic (the default: where measured faster than the
// BLAS), off (every caller takes the BLAS path, as on a CPU without AVX-512) or always
// (every layer within the kernels' limits, for tests of the kernels on any shape).
// dense_small_enabled: not off, and the CPU has AVX-512F.
enum class SmallDense { off = 0, automatic = 1, always = 2 };
void set_dense_small(SmallDense mode);
SmallDense dense_small_mode();
bool dense_small_enabled();

}  // namespace gc
