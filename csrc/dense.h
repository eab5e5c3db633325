// Dense (Linear) layer: Y = act(X W^T + b), X (batch, in), W (out, in) as torch.nn.Linear
// stores it, b (out,). The transposes are BLAS flags; nothing is copied.
#pragma once
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
template <class T>
void dense_backward(const T* X, const T* W, const T* dY, T* dX, T* dW, T* db, index_t batch, index_t in,
                    index_t out, bool accumulate);

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
