// PLACEHOLDER: the activation family is being written; only identity and relu for now.
#include "activation.h"

#include <stdexcept>

namespace gc {

Act parse_activation(const std::string& name) {
  if (name == "identity" || name == "linear" || name.empty()) return Act::identity;
  if (name == "relu") return Act::relu;
  throw std::invalid_argument("unknown activation '" + name + "'");
}

template <class T>
void activation_forward(Act kind, const T* x, T* y, index_t n, double) {
  for (index_t i = 0; i < n; ++i) y[i] = (kind == Act::relu && !(x[i] > T(0))) ? T(0) : x[i];
}

template <class T>
void activation_backward(Act kind, const T* x, const T*, const T* dy, T* dx, index_t n, double) {
  for (index_t i = 0; i < n; ++i) dx[i] = (kind == Act::relu && !(x[i] > T(0))) ? T(0) : dy[i];
}

template void activation_forward<float>(Act, const float*, float*, index_t, double);
template void activation_forward<double>(Act, const double*, double*, index_t, double);
template void activation_backward<float>(Act, const float*, const float*, const float*, float*, index_t, double);
template void activation_backward<double>(Act, const double*, const double*, const double*, double*, index_t, double);

}  // namespace gc
