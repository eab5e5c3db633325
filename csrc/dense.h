// Dense (Linear) layer: Y = act(X W^T + b), X (batch, in), W (out, in) as torch.nn.Linear
// stores it, b (out,). The transposes are BLAS flags, except for the backward's dX of a large
// float32 W, which copies W's blocks transposed into a buffer (dense_dx_blocked_shape below).
#pragma once
#include <cstddef>

#include "activation.h"
#include "parallel.h"

namespace gc {

// Writes Y (batch, out). When Z is non-null it receives the pre-activation X W^T + b, which
// the backward pass of activations that need their input reads. b may be null.
template <class T>
void dense_forward(const T* X, const T* W, const T* b, T* Y, T* Z, index_t batch, index_t in, index_t out,
                   Act act, double alpha);

// dX = dY W, dW (+)= dY^T X, db (+)= sum_rows dY (float64 partial sums for float32).
// Any of dX, dW, db may be null.
// dY here is the gradient of the pre-activation (apply activation_backward first).
// dX goes through blocks of W transposed into a buffer where that pays (a layer
// dense_dx_blocked_shape accepts, batch > 0, the GEMM on one BLAS thread): this form
// takes a buffer of its own, one per thread, kept for the next call and grown to the
// largest layer's dense_dx_buffer_values (eager: gradcore.functional).
template <class T>
void dense_backward(const T* X, const T* W, const T* dY, T* dX, T* dW, T* db, index_t batch, index_t in,
                    index_t out, bool accumulate);
// The same with the caller's buffer of dx_buffer_values values (the compiled plan's): the
// plain GEMM when it is smaller than dense_dx_buffer_values(in, out) (or null). Never
// allocates.
template <class T>
void dense_backward(const T* X, const T* W, const T* dY, T* dX, T* dW, T* db, index_t batch, index_t in,
                    index_t out, bool accumulate, T* dx_buffer, index_t dx_buffer_values);

// Whether dX = dY W of an (out, in) layer of `elem`-byte values may run through the
// transposed blocks of W (see dense.cpp for the measurements): float32 with a W of at
// least 1M values; dense_backward takes them when besides batch > 0 and the GEMM runs on
// one BLAS thread (false here: never blocked, no buffer needed).
bool dense_dx_blocked_shape(index_t in, index_t out, std::size_t elem);
// Values of the buffer the blocked dX needs (in x min(out, block rows)).
index_t dense_dx_buffer_values(index_t in, index_t out);

// The weight gradient alone: dW (+)= dY^T X (dense_backward's dW). accumulate adds the
// product into dW inside the GEMM (beta = 1): no zeroing pass over dW and no separate
// sum with a scratch copy. The result is dW + (dY^T X rounded) as a separate add gives
// it while the BLAS sums the batch in one pass (its k block covers the batch); a longer
// batch is summed in blocks, each added into dW (a rounding per block, not per product).
template <class T>
void dense_backward_dw(const T* X, const T* dY, T* dW, index_t batch, index_t in, index_t out, bool accumulate);

// activation_backward(act, z, y, G -> G) then db = sum_rows G (not accumulated), in pieces
// of rows so each piece's gradient is summed while it is in cache: the same values as the
// two separate passes (elementwise gradient; the same kRows-row groups and double
// partials as dense_backward's db), one read of G fewer. G (rows, cols) is overwritten.
template <class T>
void dense_act_backward_bias(Act act, const T* z, const T* y, T* G, T* db, index_t rows, index_t cols,
                             double alpha);

}  // namespace gc
