// Batch normalisation over the batch axis of X (N, C) (PyTorch BatchNorm1d semantics).
#pragma once
#include "parallel.h"

namespace gc {

// Training forward: normalise with the batch mean and biased variance, write mean and
// invstd = 1/sqrt(var + eps) per channel, and (when given) update the running statistics
// running = (1 - momentum) running + momentum batch, with the unbiased variance.
// gamma/beta/running_* may be null.
template <class T>
void batch_norm_forward_train(const T* X, const T* gamma, const T* beta, T* running_mean, T* running_var,
                              double momentum, double eps, T* Y, T* save_mean, T* save_invstd, index_t n,
                              index_t c);

// Evaluation forward with the running statistics.
template <class T>
void batch_norm_forward_eval(const T* X, const T* gamma, const T* beta, const T* running_mean,
                             const T* running_var, double eps, T* Y, index_t n, index_t c);

// Backward given the statistics used in the forward pass. training: the statistics were
// the batch's own (their dependence on X is differentiated); otherwise constants.
// dX/dgamma/dbeta may be null; accumulate adds into dgamma/dbeta.
template <class T>
void batch_norm_backward(const T* X, const T* dY, const T* gamma, const T* mean, const T* invstd, T* dX,
                         T* dgamma, T* dbeta, index_t n, index_t c, bool training, bool accumulate);

}  // namespace gc
