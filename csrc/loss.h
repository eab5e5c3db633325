// Losses with forward and backward fused, mean reduction. Each returns the loss (summed
// in double) and, when grad is non-null, writes d(loss)/d(input) into it.
#pragma once
#include <cstdint>

#include "parallel.h"

namespace gc {

template <class T>
double mse_loss(const T* pred, const T* target, T* grad, index_t n);

// Stable form: max(x, 0) - x t + log1p(exp(-|x|)).
template <class T>
double bce_with_logits_loss(const T* logits, const T* target, T* grad, index_t n);

// Integer labels. Returns the row of the first label outside [0, classes) through bad_row
// (and the loss is not meaningful); bad_row = -1 when all labels are valid.
template <class T>
double cross_entropy_loss(const T* logits, const std::int64_t* labels, T* grad, index_t rows, index_t classes,
                          index_t* bad_row);

// Probability (one-hot or soft) targets of shape (rows, classes).
template <class T>
double cross_entropy_onehot_loss(const T* logits, const T* target, T* grad, index_t rows, index_t classes);

}  // namespace gc
