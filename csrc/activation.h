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

}  // namespace gc
