// Out-of-place matrix transpose, B = A^T, an exact copy (every value's bits, NaN
// payloads included). Dense's backward uses it to give the dX GEMM W^T in the layout
// OpenBLAS packs fast (dense.cpp, dense_backward).
#pragma once
#include "parallel.h"

namespace gc {

// B (cols, rows) = A (rows, cols) transposed, for float and double. lda >= cols and
// ldb >= rows are the row strides (in values) of A and B; B's columns past `rows` are not
// written. A and B must not overlap.
template <class T>
void transpose(const T* A, T* B, index_t rows, index_t cols, index_t lda, index_t ldb);

}  // namespace gc
