// Blocked transpose (transpose.h).
//
// The matrix is cut into square tiles of one cache line a side (16 x 16 float32, 8 x 8
// float64): a tile is read as V full lines of A, transposed in registers, and written as V
// full lines of B, so every line of either matrix is touched once, whatever the row
// strides (with a power-of-two stride, the 8 KB rows of a 2048-wide matrix, a loop that
// comes back to a line later finds it evicted: the lines of a column all fall in one
// cache set). Tiles go along a strip of V rows of A (A's V lines are V sequential
// streams the hardware prefetcher follows); B's lines of the next tiles are prefetched
// for writing two tiles ahead.
//
// A destination beyond the L2 cache (kStreamBytes) with 64-byte aligned rows is written
// with non-temporal stores instead (on x86-64): no read of each B line before it is
// overwritten. 2048 x 2048 float32 (16 MB) on the 2-core Xeon VM, one thread, while other
// jobs shared the machine: non-temporal 1.8 ms, prefetched stores 3.1 ms, plain stores
// without prefetch 8.4 ms (memcpy of 16 MB: 1.15 ms). A destination the caller reads
// again at once (dense.cpp's ~1 MB blocks) stays in cache with ordinary stores.
//
// The register transpose: V rows in vector registers (GCC / Clang vector extensions,
// compiled per clone: one zmm per row with AVX-512, two ymm with AVX2), log2(V) stages
// of two-source shuffles, stage s exchanging the off-diagonal s x s blocks of every
// 2s x 2s block. Elsewhere (other compilers) a plain loop over the tile.
#include "transpose.h"

#include <cstdint>
#include <cstring>
#include <utility>

#if defined(__SSE2__)
#include <emmintrin.h>
#define GC_NT_STORES 1
#else
#define GC_NT_STORES 0
#endif

#include "simd.h"

// The AVX-512 clone holds a float32 tile's 16 rows in 16 zmm registers (32 exist) and does
// each shuffle stage in one vpermt2ps / vshufps / vshuff32x4 per row.
#undef GC_CLONES
#define GC_CLONES GC_CLONES_V4

namespace gc {

namespace {

// Destinations of at least this many bytes are streamed (non-temporal stores), when
// their rows are 64-byte aligned: twice the L2 cache of the VM.
constexpr std::size_t kStreamBytes = std::size_t(4) << 20;

// Grain (parallel.h): a second thread only from 4M values (a copy at memory bandwidth,
// ~1-2 ns per value; the same grain as the other bandwidth-bound passes).
constexpr index_t kGrain = index_t(1) << 21;

// Tiles the stores run ahead of, in prefetches of B's lines.
constexpr int kAhead = 2;

template <class T>
constexpr int kSide = 64 / static_cast<int>(sizeof(T));  // values per 64-byte line

#if defined(__GNUC__) || defined(__clang__)
#define GC_TILE_VECTORS 1
template <class T, int V>
struct Vec {
  typedef T type __attribute__((vector_size(sizeof(T) * V)));
};
template <class T>
using line_t = typename Vec<T, kSide<T>>::type;

template <class T>
GC_INLINE void load_line(const T* p, line_t<T>& v) {
  std::memcpy(&v, p, sizeof v);
}

template <class T, bool Stream>
GC_INLINE void store_line(T* p, const line_t<T>& v) {
#if GC_NT_STORES
  if constexpr (Stream) {
    __m128i q[4];
    std::memcpy(q, &v, sizeof q);
#pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) _mm_stream_si128(reinterpret_cast<__m128i*>(p) + k, q[k]);
    return;
  }
#endif
  std::memcpy(p, &v, sizeof v);
}

// Stage s: lane j of the new row i (i & s == 0) comes from row i or row i + s.
constexpr int lo_lane(int j, int s, int v) { return (j & s) ? v + j - s : j; }
constexpr int hi_lane(int j, int s, int v) { return (j & s) ? v + j : j + s; }

// (results through references: a function returning a 64-byte vector by value draws
// GCC's -Wpsabi note in the clones without AVX-512, although it is always inlined)
template <int S, int V, class W, std::size_t... J>
GC_INLINE void shuffle_pair(const W& a, const W& b, W& lo, W& hi, std::index_sequence<J...>) {
  lo = __builtin_shufflevector(a, b, lo_lane(static_cast<int>(J), S, V)...);
  hi = __builtin_shufflevector(a, b, hi_lane(static_cast<int>(J), S, V)...);
}

template <int S, int V, class W>
GC_INLINE void stages(W* r) {
  if constexpr (S >= 1) {
#pragma GCC unroll 16
    for (int i = 0; i < V; ++i) {
      if (i & S) continue;
      const W a = r[i], b = r[i + S];
      shuffle_pair<S, V>(a, b, r[i], r[i + S], std::make_index_sequence<V>());
    }
    stages<S / 2, V>(r);
  }
}

// One V x V tile: A's rows at a (stride lda) into B's rows at b (stride ldb).
template <class T, bool Stream>
GC_INLINE void tile(const T* a, index_t lda, T* b, index_t ldb) {
  constexpr int V = kSide<T>;
  line_t<T> r[V];
#pragma GCC unroll 16
  for (int i = 0; i < V; ++i) load_line(a + i * lda, r[i]);
  stages<V / 2, V>(r);
#pragma GCC unroll 16
  for (int i = 0; i < V; ++i) store_line<T, Stream>(b + i * ldb, r[i]);
}
#else
#define GC_TILE_VECTORS 0
template <class T, bool Stream>
GC_INLINE void tile(const T* a, index_t lda, T* b, index_t ldb) {
  constexpr int V = kSide<T>;
  for (int j = 0; j < V; ++j)
    for (int i = 0; i < V; ++i) b[j * ldb + i] = a[i * lda + j];
}
#endif

// B's block of A's rows [i0, i1) and columns [j0, j1), one value at a time (the edges).
template <class T>
GC_INLINE void edge(const T* A, T* B, index_t i0, index_t i1, index_t j0, index_t j1, index_t lda, index_t ldb) {
  for (index_t j = j0; j < j1; ++j)
    for (index_t i = i0; i < i1; ++i) B[j * ldb + i] = A[i * lda + j];
}

// Strips [s0, s1) of V rows of A, every column.
template <class T, bool Stream>
GC_INLINE void strips_of(const T* A, T* B, index_t s0, index_t s1, index_t cols, index_t lda, index_t ldb) {
  constexpr int V = kSide<T>;
  const index_t full = cols / V * V;
  for (index_t s = s0; s < s1; ++s) {
    const index_t i0 = s * V;
    for (index_t j = 0; j < full; j += V) {
      if (!Stream && j + kAhead * V < full) {
#pragma GCC unroll 16
        for (int q = 0; q < V; ++q) __builtin_prefetch(B + (j + kAhead * V + q) * ldb + i0, 1, 3);
      }
      tile<T, Stream>(A + i0 * lda + j, lda, B + j * ldb + i0, ldb);
    }
    edge(A, B, i0, i0 + V, full, cols, lda, ldb);
  }
#if GC_NT_STORES
  if (Stream) _mm_sfence();  // the streamed lines reach memory before anyone reads B
#endif
}

template <class T>
GC_INLINE void strips(const T* A, T* B, index_t s0, index_t s1, index_t cols, index_t lda, index_t ldb, bool stream) {
  if (stream) strips_of<T, true>(A, B, s0, s1, cols, lda, ldb);
  else strips_of<T, false>(A, B, s0, s1, cols, lda, ldb);
}

template <class T>
GC_INLINE void last_rows(const T* A, T* B, index_t i0, index_t rows, index_t cols, index_t lda, index_t ldb) {
  edge(A, B, i0, rows, 0, cols, lda, ldb);
}

GC_SIMD_DISPATCH(void, strips_k, strips,
                 (const T* A, T* B, index_t s0, index_t s1, index_t c, index_t lda, index_t ldb, bool stream),
                 (A, B, s0, s1, c, lda, ldb, stream))
GC_SIMD_DISPATCH(void, last_rows_k, last_rows,
                 (const T* A, T* B, index_t i0, index_t r, index_t c, index_t lda, index_t ldb),
                 (A, B, i0, r, c, lda, ldb))

}  // namespace

template <class T>
void transpose(const T* A, T* B, index_t rows, index_t cols, index_t lda, index_t ldb) {
  if (rows <= 0 || cols <= 0) return;
  constexpr int V = kSide<T>;
  const index_t nstrips = rows / V;
  const std::size_t bytes = sizeof(T) * static_cast<std::size_t>(cols) * static_cast<std::size_t>(ldb);
  const bool stream = GC_NT_STORES && GC_TILE_VECTORS && bytes >= kStreamBytes &&
                      reinterpret_cast<std::uintptr_t>(B) % 64 == 0 && (sizeof(T) * ldb) % 64 == 0;
  // strips are independent (each writes its own columns of B): any cut gives the same B
  parallel_runs(nstrips, rows * cols, kGrain,
                [&](index_t s0, index_t s1) { if (s0 < s1) strips_k(A, B, s0, s1, cols, lda, ldb, stream); });
  if (nstrips * V < rows) last_rows_k(A, B, nstrips * V, rows, cols, lda, ldb);
}

template void transpose<float>(const float*, float*, index_t, index_t, index_t, index_t);
template void transpose<double>(const double*, double*, index_t, index_t, index_t, index_t);

}  // namespace gc
