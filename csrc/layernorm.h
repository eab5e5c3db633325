// Layer normalisation over the last axis of X viewed as (rows, d).
#pragma once
#include "parallel.h"

namespace gc {

// Y = (X - mean_row) * invstd_row * gamma + beta; writes mean and invstd per row.
// gamma/beta (d,) may be null.
template <class T>
void layer_norm_forward(const T* X, const T* gamma, const T* beta, double eps, T* Y, T* save_mean, T* save_invstd,
                        index_t rows, index_t d);

// dX per row = invstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dY * gamma;
// dgamma (+)= sum_rows dY * xhat, dbeta (+)= sum_rows dY. Any output may be null.
template <class T>
void layer_norm_backward(const T* X, const T* dY, const T* gamma, const T* mean, const T* invstd, T* dX, T* dgamma,
                         T* dbeta, index_t rows, index_t d, bool accumulate);

}  // namespace gc
