// Gradient statistics: sum of squares, norm, max |x|, non-finite count, mean and std of
// many arrays, each read once. This is the monitoring hot path (DESIGN.md, decision 7).
//
// Results are deterministic for any thread count: every array is cut into chunks of a
// fixed size that does not depend on the threads, each chunk's partials are computed
// alone, and the partials are combined in chunk order.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>
#include <type_traits>

#include "parallel.h"

namespace gc {

// n value-initialised elements of a trivially destructible T, on the stack when n <= N,
// else in one heap block: the per-step work lists and partial sums of the norm and
// optimizer passes without a heap allocation for the sizes networks have (a fallback
// for larger ones). Not copyable; lives in the caller's frame.
template <class T, std::size_t N>
class SmallBuffer {
  static_assert(std::is_trivially_destructible<T>::value, "SmallBuffer holds trivially destructible values");

 public:
  explicit SmallBuffer(std::size_t n) : size_(n) {
    if (n > N) heap_.reset(new T[n]());
    data_ = n > N ? heap_.get() : reinterpret_cast<T*>(local_);
    if (n <= N)
      for (std::size_t i = 0; i < n; ++i) new (data_ + i) T();
  }
  SmallBuffer(const SmallBuffer&) = delete;
  SmallBuffer& operator=(const SmallBuffer&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t size() const { return size_; }
  T& operator[](std::size_t i) { return data_[i]; }
  const T& operator[](std::size_t i) const { return data_[i]; }

 private:
  alignas(T) unsigned char local_[N * sizeof(T)];
  std::unique_ptr<T[]> heap_;
  T* data_;
  std::size_t size_;
};

// One array of gradient values (float32 or float64), contiguous. noise (same dtype and
// size, or null) is added to the values, rounded to the dtype, by sum_of_squares only.
struct GradView {
  const void* data;
  index_t size;
  bool is_double;
  const void* noise = nullptr;
};

// Views of the segments [offsets[i], offsets[i+1]) of one flat buffer, with the same
// segments of noise when it is given; offsets (k+1,) must be valid (non-decreasing, from 0
// to the buffer's size).
// views: k entries, written.
template <class T>
void flat_views(const T* buffer, const T* noise, const std::int64_t* offsets, index_t k, GradView* views) {
  for (index_t i = 0; i < k; ++i)
    views[i] = {buffer + offsets[i], offsets[i + 1] - offsets[i], sizeof(T) == sizeof(double),
                noise ? noise + offsets[i] : nullptr};
}

// Views of a layout's tensors, in the caller's frame for up to 64 tensors.
using ViewList = SmallBuffer<GradView, 64>;

// Columns of one row of grad_stats' output.
enum StatCol { kSumSq = 0, kL2 = 1, kMaxAbs = 2, kNonFinite = 3, kMean = 4, kStd = 5, kStatCols = 6 };

// out: (k, kStatCols) row-major. max_abs is over finite values only; NaN and +-Inf are
// counted in nonfinite (and do reach the sums, mean and std). Empty arrays give zeros.
void grad_stats(const GradView* arrays, index_t k, double* out);

// Segments [offsets[i], offsets[i+1]) of one buffer; offsets (k+1,) must be valid
// (non-decreasing, from 0 to the buffer's size).
template <class T>
void grad_stats_flat(const T* buffer, const std::int64_t* offsets, index_t k, double* out);

// out: (k,) sum of squares per array (of data + noise where noise is given). Returns the
// first array holding a NaN or an Inf, or -1. The one sum-of-squares / non-finite kernel:
// global_norm and the optimizers' clip pass (optim.cpp) run through it. double_lanes:
// false sums float32 squares in float lanes per 4K block (flushed to double; 1.3-1.7x
// faster, ~1e-7 relative), true sums them in double (what the optimizers use).
// raw_stats (optional, implies double lanes): row a (at raw_stats + a * raw_stride)
// receives [sum of data^2, max |data| over the finite values, count of NaN / Inf in data]
// of array a's values without the noise, from the same read; out is unchanged by it.
std::int64_t sum_of_squares(const GradView* arrays, index_t k, double* out, bool double_lanes = false,
                            double* raw_stats = nullptr, index_t raw_stride = 3);

// sqrt of the sum of squares over all arrays.
double global_norm(const GradView* arrays, index_t k);

}  // namespace gc
