// Element-wise activations and the row-wise softmax family, forward and backward.
#pragma once
#include <string>
#include <vector>

#include "parallel.h"

namespace gc {

enum class Act { identity, relu, leaky_relu, elu, selu, sigmoid, tanh, silu, gelu, gelu_tanh, softplus };

// "identity", "relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "silu" (or
// "swish"), "gelu", "gelu_tanh", "softplus"; throws std::invalid_argument otherwise.
Act parse_activation(const std::string& name);

// The accepted names: the canonical ones in enum order, then the aliases.
const std::vector<std::string>& activation_name_list();

// y = f(x) over n elements; y may alias x. alpha: slope of leaky_relu, alpha of elu.
template <class T>
void activation_forward(Act kind, const T* x, T* y, index_t n, double alpha);

// dx = f'(x) * dy; x is the forward input, y the forward output (each kind reads the one
// it needs, both must be given); dx may alias dy.
template <class T>
void activation_backward(Act kind, const T* x, const T* y, const T* dy, T* dx, index_t n, double alpha);

// PReLU over (rows, cols): y = x if x > 0 else a[j] * x, with a of size cols (or 1).
template <class T>
void prelu_forward(const T* x, const T* a, T* y, index_t rows, index_t cols, index_t a_size);
// dx = dy * slope; da (+)= sum over rows of dy * min(x, 0).
template <class T>
void prelu_backward(const T* x, const T* a, const T* dy, T* dx, T* da, index_t rows, index_t cols,
                    index_t a_size, bool accumulate);

// Row-wise over the last axis of (rows, cols).
template <class T>
void softmax_forward(const T* x, T* y, index_t rows, index_t cols);
template <class T>
void softmax_backward(const T* y, const T* dy, T* dx, index_t rows, index_t cols);
template <class T>
void log_softmax_forward(const T* x, T* y, index_t rows, index_t cols);
template <class T>
void log_softmax_backward(const T* y, const T* dy, T* dx, index_t rows, index_t cols);

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

}  // namespace gc
