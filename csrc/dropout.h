// Dropout with a counter-based generator: element i is kept iff the hash of
// (seed, offset + i) clears the threshold, so the mask depends on seed and offset only,
// never on the thread count or the order of evaluation.
#pragma once
#include <cstdint>

#include "parallel.h"

namespace gc {

template <class T>
void dropout_forward(const T* x, T* y, std::uint8_t* mask, index_t n, double p, std::uint64_t seed,
                     std::uint64_t offset);

template <class T>
void dropout_backward(const T* dy, const std::uint8_t* mask, T* dx, index_t n, double p);

}  // namespace gc
