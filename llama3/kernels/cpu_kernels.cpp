// Weight-only int8 and int4 products, decode-time attention, whole decode steps of int8/int4
// models (every layer and the head in one call), and RMSNorm, RoPE and argmax passes for float32
// rows, for x86 CPUs with AVX2 and FMA, and AVX-512 VNNI products where the CPU has it
// (llama3.kernels builds this file once per CPU with the system C++ compiler, -march=native, and
// loads it as the torch ops llama3_kernels::*).
//
// Why: decoding reads every weight once per token, so a product of a few rows must stream its
// weights at memory speed. PyTorch's CPU int8/int4 kernels either quantize activations to 7 bits
// (fbgemm) or convert each weight to float one lane at a time. Here each activation row is put on
// its own int16 grid (error 2^-16 of the row's largest value) and multiplied with the weights by
// vpmaddwd, 16 products per instruction; int32 sums go to float every few thousand products, so
// nothing overflows. A row's result does not depend on the other rows of the batch: each row is
// summed in the same order whichever block it falls in.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "simd512.h"

namespace {

constexpr int64_t kRowBlock = 4;    // activation rows per pass over a weight row
constexpr int64_t kOutBlock = 32;   // weight rows per task: their bytes stay in L1/L2 across passes
constexpr int64_t kColBlock = 4;    // weight rows per pass for a single activation row
// Weight bytes ahead of the current read that the products prefetch: decoding streams every weight
// once per token, and the hardware prefetchers alone (restarting at each 4 KiB page, a few lines
// deep) leave most of the bandwidth unused: 9 KiB ahead into L1 took a decode step from 8.2 to
// 4.5 ms on a 2-core Xeon (2 KiB: 5.2 ms; 36 KiB: 5.3 ms). Into L2 (prefetcht1) it goes further,
// since an L1 prefetch holds one of the core's ~16 fill buffers until its line arrives and L2's
// own queue tracks more misses: 16 KiB ahead into L2 decoded SmolLM2 int8 at 198-222 tok/s
// against 151-155 (9 KiB into L1), interleaved (4 KiB: 165-175, 32 KiB: 175-179, 64 KiB: 152-158).
constexpr int64_t kPrefetch = 16384;
// int8: per flush a lane adds 2048/32 * 4 products of at most 128*32767: < 2^31
constexpr int64_t kFlush = 2048;

// The threads of one parallel region, each taking its share of every phase of a decode step: a
// whole stack of layers runs in one region with a barrier between phases, where a region per
// product and per attention (five a layer) cost ~12 us of a layer's ~170 us on a 2-core machine.
struct Team {
  int64_t t = 0, T = 1;
  // thread t's share [lo, hi) of n items, in whole units of `unit` items
  std::pair<int64_t, int64_t> share(int64_t n, int64_t unit) const {
    const int64_t units = (n + unit - 1) / unit;
    return {std::min(n, units * t / T * unit), std::min(n, units * (t + 1) / T * unit)};
  }
  void sync() const {
    if (T > 1) {
#pragma omp barrier
    }
  }
};

// Runs f(i0, i1) over [0, n): across the pool's threads in pieces of at least `grain` items, or,
// inside a team's region (team non-null), over this thread's share (as many threads as pieces).
template <typename F>
void split(int64_t n, int64_t grain, const Team* team, const F& f) {
  if (team == nullptr) return at::parallel_for(0, n, grain, f);
  const int64_t parts = std::min(team->T, (n + grain - 1) / grain);
  if (team->t < parts) f(n * team->t / parts, n * (team->t + 1) / parts);
}

// The weight rows [lo, hi) a product computes: all of them across the pool's threads, or one
// thread's share inside a team's region.
struct Span {
  int64_t lo, hi;
  const Team* team = nullptr;
};

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// `ahead` bytes past p into L2 (a hint, which never faults: past the weights' end is fine)
inline void prefetch(const void* p, int64_t ahead = kPrefetch) {
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) + ahead), _MM_HINT_T1);
}

// Group g's codes at p, scale and zero: prefetched per 64-byte line of codes and of scales, zeros.
inline void prefetch_group(const uint8_t* p, const float* scale, const float* zero, int64_t g) {
  if ((g & 3) == 0) prefetch(p);
  if ((g & 15) == 0) prefetch(scale, kPrefetch / 4), prefetch(zero, kPrefetch / 4);
}

inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
inline __m256i load256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

// Activations on int16 grids: x[m, k] ~= q[m, k] * step[m], stored in the order in which a
// kernel unpacks its weights:
// - Plain: the AVX-512 int8 kernel, which sign-extends 32 weights in one instruction.
// - Pairs32 (the AVX2 kernels): each 32-element chunk as its 16 even then its 16 odd elements
//   (int8: the low and high bytes of 16-bit lanes by two shifts, cheaper than a sign-extending
//   shuffle; int4: a byte's low and high nibbles).
// - Pairs64 (the AVX-512 int4 kernel, group 32): each 64-element chunk (two groups) as the even
//   elements of both groups, then the odd ones; a last 32-element chunk as in Pairs32.
enum class Layout { Plain, Pairs32, Pairs64 };

inline int64_t slot(Layout layout, int64_t k, int64_t K) {
  const int64_t pairs32 = (k & ~int64_t(31)) + ((k & 1) << 4) + ((k & 31) >> 1);
  if (layout == Layout::Plain) return k;
  if (layout == Layout::Pairs32 || (k & ~int64_t(63)) + 64 > K) return pairs32;
  return (k & ~int64_t(63)) + ((k & 1) << 5) + (((k >> 5) & 1) << 4) + ((k & 31) >> 1);
}

// the largest |x[k]| (NaNs ignored), 8 lanes at a time
inline float abs_max(const float* x, int64_t K) {
  const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 top = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8)  // max(v, top): a NaN in v leaves top
    top = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + k), magnitude), top);
  float lanes[8];
  _mm256_storeu_ps(lanes, top);
  float amax = 0.f;
  for (float v : lanes) amax = std::max(amax, v);
  for (; k < K; ++k) amax = std::max(amax, std::fabs(x[k]));
  return amax;
}

// q[k] = round-to-nearest-even(x[k] * inv), 16 at a time (the rounding of nearbyint)
inline void round_to_int16(const float* x, int64_t K, float inv, int16_t* q) {
  const __m256 iv = _mm256_set1_ps(inv);
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256i a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), iv));
    const __m256i b = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k + 8), iv));
    // packs interleaves the 128-bit halves: put a's and b's back in order
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + k),
                        _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8));
  }
  for (; k < K; ++k) q[k] = static_cast<int16_t>(std::nearbyint(x[k] * inv));
}

struct Int16Rows {
  std::vector<int16_t> q;
  std::vector<float> step;
  int64_t K;
  Layout layout;
  Int16Rows(const float* x, int64_t M, int64_t K, Layout layout)
      : q(M * K), step(M), K(K), layout(layout) {
    at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
      std::vector<int16_t> natural(layout == Layout::Plain ? 0 : K);
      for (int64_t m = m0; m < m1; ++m) {
        const float* xr = x + m * K;
        int16_t* qr = q.data() + m * K;
        const float amax = abs_max(xr, K);
        const float s = amax > 0.f ? amax / 32767.f : 1.f, inv = 1.f / s;
        step[m] = s;
        if (layout == Layout::Plain) {
          round_to_int16(xr, K, inv, qr);
          continue;
        }
        round_to_int16(xr, K, inv, natural.data());
        for (int64_t k = 0; k < K; ++k) qr[slot(layout, k, K)] = natural[k];
      }
    });
  }
  int16_t at(int64_t m, int64_t k) const { return q[m * K + slot(layout, k, K)]; }
};

// Runs dot(R, C, m, n, out) for every block of R <= kRowBlock activation rows m.. and C weight
// rows n.. of the span (C = kColBlock for a single row where the kernel supports it, else 1;
// out[r * C + c]), tasks over blocks of kOutBlock weight rows, and stores out * step(m + r) *
// row_scale(n + c) into y (row stride N): the activation rows' and weight rows' scales.
// A single activation row takes weight rows four at a time: a decoded token is one row, and per
// weight row its loop is only K / 32 steps, so the per-row reduction and stores would dominate.
template <int MaxC, typename Step, typename Dot, typename RowScale>
void tiled(int64_t M, int64_t N, Step step, float* y, Dot dot, RowScale row_scale, Span span) {
  auto rows = [&](int64_t lo, int64_t hi) {
    float out[kRowBlock * kColBlock];
    auto store = [&](int64_t m, int64_t r, int64_t n, int64_t c) {
      for (int64_t i = 0; i < r; ++i)
        for (int64_t j = 0; j < c; ++j)
          y[(m + i) * N + n + j] = out[i * c + j] * step(m + i) * row_scale(n + j);
    };
    for (int64_t n0 = lo; n0 < hi; n0 += kOutBlock) {
      const int64_t n1 = std::min(hi, n0 + kOutBlock);
      for (int64_t m = 0; m < M; m += kRowBlock) {
        const int64_t r = std::min(kRowBlock, M - m);
        int64_t n = n0;
        if constexpr (MaxC > 1) {
          if (r == 1)
            for (; n + MaxC <= n1; n += MaxC) {
              dot(std::integral_constant<int, 1>{}, std::integral_constant<int, MaxC>{}, m, n, out);
              store(m, 1, n, MaxC);
            }
          else if (r == kRowBlock)  // two weight rows per pass: each load of x serves both
            for (; n + 2 <= n1; n += 2) {
              dot(std::integral_constant<int, kRowBlock>{}, std::integral_constant<int, 2>{}, m, n,
                  out);
              store(m, kRowBlock, n, 2);
            }
        }
        for (; n < n1; ++n) {
          constexpr std::integral_constant<int, 1> one{};
          switch (r) {
            case 4: dot(std::integral_constant<int, 4>{}, one, m, n, out); break;
            case 3: dot(std::integral_constant<int, 3>{}, one, m, n, out); break;
            case 2: dot(std::integral_constant<int, 2>{}, one, m, n, out); break;
            default: dot(one, one, m, n, out); break;
          }
          store(m, r, n, 1);
        }
      }
    }
  };
  if (span.team) return rows(span.lo, span.hi);
  const int64_t blocks = (span.hi - span.lo + kOutBlock - 1) / kOutBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    rows(span.lo + b0 * kOutBlock, std::min(span.hi, span.lo + b1 * kOutBlock));
  });
}

// Sums of the 8 lanes of each of up to four vectors, each as ((v0+v1)+(v2+v3))+((v4+v5)+(v6+v7)):
// one order for every caller, so a row's result does not depend on how rows were grouped.
inline __m128 hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
  return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

template <int N>
inline void hsum_all(const __m256 (&f)[N], float* out) {
  for (int i = 0; i < N; i += 4) {
    const __m256 z = _mm256_setzero_ps();
    float s[4];
    _mm_storeu_ps(s, hsum4(f[i], i + 1 < N ? f[i + 1] : z, i + 2 < N ? f[i + 2] : z,
                           i + 3 < N ? f[i + 3] : z));
    for (int j = 0; j < 4 && i + j < N; ++j) out[i + j] = s[j];
  }
}

// ---- int8: w[n, k] = codes[n, k] * scale[n] ----

// One step of R activation rows times C weight rows over 32 weights k.., into int32 lanes
// a[r * C + c], per instruction set.
#if defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VNNI__)
// AVX-512 VNNI (the kernels are built for the machine they run on): 32 weights sign-extended to
// 16 bits by one instruction and multiplied-and-added into 16 int32 lanes by vpdpwssd.
constexpr Layout kInt8Layout = Layout::Plain;
using Int32s = __m512i;
using Floats = __m512;
inline Int32s int32_zero() { return _mm512_setzero_si512(); }
inline Floats floats_zero() { return _mm512_setzero_ps(); }
inline Floats add_converted(Floats f, Int32s a) { return _mm512_add_ps(f, _mm512_cvtepi32_ps(a)); }
inline __m256 fold(Floats v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
}

template <int R, int C>
inline void int8_step(Int32s* a, const int16_t* x, int64_t K, const int8_t* w, int64_t k) {
  __m512i wk[C];
  for (int c = 0; c < C; ++c) {
    if ((k & 63) == 0) prefetch(w + c * K + k);  // one per 64-byte line
    wk[c] = _mm512_cvtepi8_epi16(load256(w + c * K + k));
  }
  for (int r = 0; r < R; ++r) {
    const __m512i xk = _mm512_loadu_si512(x + r * K + k);
    for (int c = 0; c < C; ++c) a[r * C + c] = _mm512_dpwssd_epi32(a[r * C + c], wk[c], xk);
  }
}
#else
// AVX2: the low and high bytes of 16-bit lanes (the even and odd weights) by shifts, each
// multiplied with its activations by vpmaddwd.
constexpr Layout kInt8Layout = Layout::Pairs32;
using Int32s = __m256i;
using Floats = __m256;
inline Int32s int32_zero() { return _mm256_setzero_si256(); }
inline Floats floats_zero() { return _mm256_setzero_ps(); }
inline Floats add_converted(Floats f, Int32s a) { return _mm256_add_ps(f, _mm256_cvtepi32_ps(a)); }
inline __m256 fold(Floats v) { return v; }

template <int R, int C>
inline void int8_step(Int32s* a, const int16_t* x, int64_t K, const int8_t* w, int64_t k) {
  __m256i even[C], odd[C];
  for (int c = 0; c < C; ++c) {
    if ((k & 63) == 0) prefetch(w + c * K + k);  // one per 64-byte line
    const __m256i b = load256(w + c * K + k);
    even[c] = _mm256_srai_epi16(_mm256_slli_epi16(b, 8), 8);
    odd[c] = _mm256_srai_epi16(b, 8);
  }
  for (int r = 0; r < R; ++r) {
    const __m256i x0 = load256(x + r * K + k), x1 = load256(x + r * K + k + 16);
    for (int c = 0; c < C; ++c)
      a[r * C + c] = _mm256_add_epi32(
          a[r * C + c],
          _mm256_add_epi32(_mm256_madd_epi16(even[c], x0), _mm256_madd_epi16(odd[c], x1)));
  }
}
#endif

// R activation rows times C int8 weight rows: out[r * C + c].
template <int R, int C>
inline void int8_dot(const int16_t* x, int64_t K, const int8_t* w, float* out) {
  Floats f[R * C];
  for (int i = 0; i < R * C; ++i) f[i] = floats_zero();
  for (int64_t k0 = 0; k0 < K; k0 += kFlush) {
    Int32s a[R * C];
    for (int i = 0; i < R * C; ++i) a[i] = int32_zero();
    for (int64_t k = k0; k < std::min(K, k0 + kFlush); k += 32) int8_step<R, C>(a, x, K, w, k);
    for (int i = 0; i < R * C; ++i) f[i] = add_converted(f[i], a[i]);
  }
  __m256 g[R * C];
  for (int i = 0; i < R * C; ++i) g[i] = fold(f[i]);
  hsum_all(g, out);
}

// The span's columns of y (M, N) = xq (M, K) times the int8 weights' transpose; K a multiple of 32.
void int8_rows(const Int16Rows& xq, const int8_t* codes, const float* scale, int64_t N, float* y,
               Span span) {
  const int64_t M = xq.step.size(), K = xq.K;
  if (M == 0 || span.lo >= span.hi) return;
  tiled<kColBlock>(
      M, N, [&](int64_t m) { return xq.step[m]; }, y,
      [&](auto R, auto C, int64_t m, int64_t n, float* out) {
        int8_dot<decltype(R)::value, decltype(C)::value>(xq.q.data() + m * K, K, codes + n * K,
                                                         out);
      },
      [&](int64_t n) { return scale[n]; }, span);
}

void int8_product(const float* x, int64_t M, int64_t K, const int8_t* codes, const float* scale,
                  int64_t N, float* y) {
  if (M == 0 || N == 0) return;
  int8_rows(Int16Rows(x, M, K, kInt8Layout), codes, scale, N, y, {0, N});
}

void check_int8(const at::Tensor& codes, const at::Tensor& scale, int64_t K, const char* what) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kChar && codes.is_contiguous() &&
                  codes.device().is_cpu() && scale.device().is_cpu(),
              what, ": codes must be a contiguous int8 matrix on the CPU");
  TORCH_CHECK(codes.size(1) == K && K % 32 == 0, what, ": K must match and be a multiple of 32");
  TORCH_CHECK(scale.numel() == codes.size(0) && scale.scalar_type() == at::kFloat &&
                  scale.is_contiguous(),
              what, ": one float32 scale per output row");
}

at::Tensor int8_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "int8_mm: x must be a contiguous float32 CPU matrix");
  check_int8(codes, scale, x.size(1), "int8_mm");
  at::Tensor y = at::empty({x.size(0), codes.size(0)}, x.options());
  int8_product(x.data_ptr<float>(), x.size(0), x.size(1), codes.data_ptr<int8_t>(),
               scale.data_ptr<float>(), codes.size(0), y.data_ptr<float>());
  return y;
}

// ---- int4: w[n, k] = code * scale[n, k / group] + zero[n, k / group], two codes a byte ----

// The zeros' share of R rows: sum over groups of zero * (sum of the group's x), 8 at a time.
template <int R>
inline void add_zeros(const float* xsum, const float* zero, int64_t groups, __m256 (&f)[R],
                      float* out) {
  for (int r = 0; r < R; ++r) {
    const float* xs = xsum + r * groups;
    __m256 z = f[r];
    int64_t g = 0;
    for (; g + 8 <= groups; g += 8)
      z = _mm256_fmadd_ps(_mm256_loadu_ps(zero + g), _mm256_loadu_ps(xs + g), z);
    float tail = 0.f;
    for (; g < groups; ++g) tail += zero[g] * xs[g];
    out[r] = hsum(z) + tail;
  }
}

// 32 weights (16 bytes) widened to 16-bit lanes: the low nibbles are the even weights, the
// high nibbles the odd ones (matching Int16Rows' order).
struct Nibbles {
  __m256i even, odd;
  explicit Nibbles(const uint8_t* p) {
    const __m256i b = _mm256_cvtepu8_epi16(load128(p));
    even = _mm256_and_si256(b, _mm256_set1_epi16(0x0F));
    odd = _mm256_srli_epi16(b, 4);
  }
  __m256i dot(const int16_t* x) const {
    return _mm256_add_epi32(_mm256_madd_epi16(even, load256(x)),
                            _mm256_madd_epi16(odd, load256(x + 16)));
  }
};

// Group 32 (GGUF's Q4_0/Q4_1/Q4_K): two groups per step, each with its own float accumulator,
// so one group's convert-and-FMA never waits on the other's.
template <int R>
inline void int4_dot32(const int16_t* x, const float* xsum, int64_t K, const uint8_t* w,
                       const float* scale, const float* zero, float* out) {
  const int64_t groups = K / 32;
  __m256 f[R], h[R];
  for (int r = 0; r < R; ++r) f[r] = h[r] = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= groups; g += 2) {
    if ((g & 3) == 0) prefetch(w + g * 16);  // per 64-byte line of codes, and of scales, zeros:
    if ((g & 15) == 0) prefetch(scale + g, kPrefetch / 4), prefetch(zero + g, kPrefetch / 4);
    const Nibbles w0(w + g * 16), w1(w + g * 16 + 16);
    const __m256 s0 = _mm256_broadcast_ss(scale + g), s1 = _mm256_broadcast_ss(scale + g + 1);
    for (int r = 0; r < R; ++r) {
      const int16_t* xr = x + r * K + g * 32;
      f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w0.dot(xr)), s0, f[r]);
      h[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w1.dot(xr + 32)), s1, h[r]);
    }
  }
  if (g < groups) {
    const Nibbles w0(w + g * 16);
    const __m256 s0 = _mm256_broadcast_ss(scale + g);
    for (int r = 0; r < R; ++r)
      f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(w0.dot(x + r * K + g * 32)), s0, f[r]);
  }
  for (int r = 0; r < R; ++r) f[r] = _mm256_add_ps(f[r], h[r]);
  add_zeros<R>(xsum, zero, groups, f, out);
}

// Any group that is a multiple of 32: int32 sums per group, then one FMA per group.
template <int R>
inline void int4_dot(const int16_t* x, const float* xsum, int64_t K, const uint8_t* w,
                     const float* scale, const float* zero, int64_t group, float* out) {
  const int64_t groups = K / group;
  __m256 f[R];
  for (int r = 0; r < R; ++r) f[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm256_setzero_si256();
    if ((g & 15) == 0) prefetch(scale + g, kPrefetch / 4), prefetch(zero + g, kPrefetch / 4);
    for (int64_t k = g * group; k < (g + 1) * group; k += 32) {
      if ((k & 127) == 0) prefetch(w + k / 2);
      const Nibbles wk(w + k / 2);
      for (int r = 0; r < R; ++r) a[r] = _mm256_add_epi32(a[r], wk.dot(x + r * K + k));
    }
    const __m256 s = _mm256_broadcast_ss(scale + g);
    for (int r = 0; r < R; ++r) f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r]), s, f[r]);
  }
  add_zeros<R>(xsum, zero, groups, f, out);
}

#if defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VNNI__)
// AVX-512 VNNI, group 32: 64 weights (two groups, 32 bytes) a step, widened to 16-bit lanes whose
// low nibbles are the even weights of both groups and high nibbles the odd ones (Pairs64); two
// vpdpwssd leave each group's sums in its own 8 int32 lanes, scaled by [scale g x8, g+1 x8].
constexpr bool kWideInt4 = true;

// R activation rows times C weight rows (out[r * C + c]), with the zeros' share.
template <int R, int C>
inline void int4_dot32_wide(const int16_t* x, const float* xsum, int64_t K, const uint8_t* w,
                            const float* scale, const float* zero, float* out) {
  const int64_t groups = K / 32, half = K / 2;
  const __m512i pick = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i low = _mm512_set1_epi16(0x0F);
  __m512 f[R * C];
  for (int i = 0; i < R * C; ++i) f[i] = _mm512_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= groups; g += 2) {
    __m512i lo[C], hi[C];
    __m512 s[C];
    for (int c = 0; c < C; ++c) {
      const uint8_t* p = w + c * half + g * 16;
      prefetch_group(p, scale + c * groups + g, zero + c * groups + g, g);
      const __m512i b = _mm512_cvtepu8_epi16(load256(p));
      lo[c] = _mm512_and_si512(b, low);
      hi[c] = _mm512_srli_epi16(b, 4);
      const double* two = reinterpret_cast<const double*>(scale + c * groups + g);
      const __m128 pair = _mm_castpd_ps(_mm_load_sd(two));  // scale g, g + 1
      s[c] = _mm512_permutexvar_ps(pick, _mm512_castps128_ps512(pair));
    }
    for (int r = 0; r < R; ++r) {
      const int16_t* xr = x + r * K + g * 32;
      const __m512i x0 = _mm512_loadu_si512(xr), x1 = _mm512_loadu_si512(xr + 32);
      for (int c = 0; c < C; ++c) {
        const __m512i a =
            _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(_mm512_setzero_si512(), lo[c], x0), hi[c], x1);
        f[r * C + c] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), s[c], f[r * C + c]);
      }
    }
  }
  __m256 h[R * C];
  for (int i = 0; i < R * C; ++i) h[i] = fold(f[i]);
  if (g < groups)  // an odd last group, stored as in Pairs32
    for (int c = 0; c < C; ++c) {
      const Nibbles wk(w + c * half + g * 16);
      const __m256 sc = _mm256_broadcast_ss(scale + c * groups + g);
      for (int r = 0; r < R; ++r)
        h[r * C + c] =
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(wk.dot(x + r * K + g * 32)), sc, h[r * C + c]);
    }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      __m256 one[1] = {h[r * C + c]};
      add_zeros<1>(xsum + r * groups, zero + c * groups, groups, one, out + r * C + c);
    }
}
#else
constexpr bool kWideInt4 = false;
template <int R, int C>
inline void int4_dot32_wide(const int16_t*, const float*, int64_t, const uint8_t*, const float*,
                            const float*, float*) {}
#endif

// AVX2, group 32 (GGUF's Q4_0/Q4_1/Q4_K): activations quantized to int8 per 32-element block
// with the block's own scale (llama.cpp's Q8_1), so one vpmaddubsw multiplies 32 unsigned codes
// by 32 activations, against two vpmaddwd of int16 activations per 32 weights: a SmolLM2 decode
// step took 3.6-4.0 cycles per group and core that way, compute-bound where the weights sit in
// L3. Error: half a step of each block's int8 grid (its largest / 254) instead of the row's
// int16 grid (2^-16 of its largest).
constexpr bool kQ8Int4 = !kWideInt4;

// Whether this build's group-32 int4 products take the int8-block kernel: in the AVX2 build with
// LLAMA3_INT4_Q8=1 (llama.cpp's own Q4_1 x Q8_1 trade: KL vs float measured in BENCHMARKS.md).
// Opt-in: its coarse grid turns the last-bit differences of prompt attention between chunkings
// into different tokens. Read once per process, so a decode step never mixes the two.
inline bool q8_int4() {
  static const bool on = [] {
    const char* v = std::getenv("LLAMA3_INT4_Q8");
    return kQ8Int4 && v && std::strcmp(v, "1") == 0;
  }();
  return on;
}

// Activation rows on int8 grids per 32-block, in Pairs64 order (int4_dot32_q8's nibble order);
// per row, `scales` holds for each pair of blocks g, g + 1 the 8 lanes [step g x4, step g+1 x4]
// (an odd last block: its step x8), and `sums` each block's sum of x as its grid gives it.
struct Int8Blocks {
  std::vector<int8_t> q;
  std::vector<float> scales, sums;
  int64_t M = 0, K = 0, groups = 0, lanes = 0;  // lanes: floats of `scales` per row
  Int8Blocks() = default;
  Int8Blocks(const float* x, int64_t M, int64_t K)
      : q(M * K), M(M), K(K), groups(K / 32), lanes((K / 32 + 1) / 2 * 8) {
    scales.resize(M * lanes);
    sums.resize(M * groups);
    at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) quantize_row(x + m * K, m);
    });
  }

 private:
  void quantize_row(const float* xr, int64_t m) {
    int8_t* qr = q.data() + m * K;
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = xr + g * 32;
      const float amax = abs_max(xg, 32);
      const float d = amax > 0.f ? amax / 127.f : 1.f, inv = 1.f / d;
      int sum = 0;
      for (int64_t k = 0; k < 32; ++k) {
        const int v = static_cast<int>(std::nearbyint(xg[k] * inv));
        qr[slot(Layout::Pairs64, g * 32 + k, K)] = static_cast<int8_t>(v);
        sum += v;
      }
      sums[m * groups + g] = d * static_cast<float>(sum);
      float* lane = scales.data() + m * lanes + g / 2 * 8;
      const bool alone = (g & 1) == 0 && g + 1 == groups;
      for (int i = 0; i < 4; ++i) lane[(g & 1) * 4 + i] = d;
      if (alone)
        for (int i = 4; i < 8; ++i) lane[i] = d;
    }
  }
};

// R activation rows (m..) times C weight rows (out[r * C + c]), with the zeros' share: 64 weights
// (two groups, 32 bytes) a step; the low nibbles of the 32 bytes are the two groups' even weights,
// the high nibbles the odd ones, so one load, a shift and two ands give vpmaddubsw's operands;
// vpmaddwd by ones leaves group g's sums in lanes 0-3 and g + 1's in 4-7.
template <int R, int C>
inline void int4_dot32_q8(const Int8Blocks& xb, int64_t m, const uint8_t* w, const float* scale,
                          const float* zero, float* out) {
  const int64_t K = xb.K, groups = xb.groups, half = K / 2;
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const __m256i pick = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
  __m256 f[R * C];
  for (int i = 0; i < R * C; ++i) f[i] = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 2 <= groups; g += 2) {
    __m256i lo[C], hi[C];
    __m256 s[C];
    for (int c = 0; c < C; ++c) {
      const uint8_t* p = w + c * half + g * 16;
      prefetch_group(p, scale + c * groups + g, zero + c * groups + g, g);
      const __m256i b = load256(p);
      lo[c] = _mm256_and_si256(b, low);
      hi[c] = _mm256_and_si256(_mm256_srli_epi16(b, 4), low);
      const double* two = reinterpret_cast<const double*>(scale + c * groups + g);
      s[c] = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd(two))),
                                      pick);
    }
    for (int r = 0; r < R; ++r) {
      const int8_t* xr = xb.q.data() + (m + r) * K + g * 32;
      const __m256i x0 = load256(xr), x1 = load256(xr + 32);
      const __m256 d = _mm256_loadu_ps(xb.scales.data() + (m + r) * xb.lanes + g / 2 * 8);
      for (int c = 0; c < C; ++c) {
        const __m256i a = _mm256_madd_epi16(
            _mm256_add_epi16(_mm256_maddubs_epi16(lo[c], x0), _mm256_maddubs_epi16(hi[c], x1)),
            ones);
        f[r * C + c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_mul_ps(s[c], d), f[r * C + c]);
      }
    }
  }
  if (g < groups)  // an odd last group, stored as in Pairs32: even weights, then odd
    for (int c = 0; c < C; ++c) {
      const __m128i b = load128(w + c * half + g * 16);
      const __m256i v = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), low);
      const __m256 sc = _mm256_broadcast_ss(scale + c * groups + g);
      for (int r = 0; r < R; ++r) {
        const __m256i x0 = load256(xb.q.data() + (m + r) * K + g * 32);
        const __m256 d = _mm256_loadu_ps(xb.scales.data() + (m + r) * xb.lanes + g / 2 * 8);
        const __m256i a = _mm256_madd_epi16(_mm256_maddubs_epi16(v, x0), ones);
        f[r * C + c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_mul_ps(sc, d), f[r * C + c]);
      }
    }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      __m256 one[1] = {f[r * C + c]};
      add_zeros<1>(xb.sums.data() + (m + r) * groups, zero + c * groups, groups, one,
                   out + r * C + c);
    }
}

// The span's columns of y (M, N) = xb times the int4 weights' transpose (group 32), tiled as
// the int16-grid kernels are; the blocks' steps are inside the dot, so nothing scales the store.
void int4_rows_q8(const Int8Blocks& xb, const uint8_t* wp, const float* sp, const float* zp,
                  int64_t N, float* y, Span span) {
  const int64_t K = xb.K, groups = xb.groups;
  if (xb.M == 0 || span.lo >= span.hi) return;
  auto dot = [&](auto R, auto C, int64_t m, int64_t n, float* out) {
    int4_dot32_q8<decltype(R)::value, decltype(C)::value>(xb, m, wp + n * (K / 2),
                                                           sp + n * groups, zp + n * groups, out);
  };
  auto unit = [](int64_t) { return 1.f; };
  tiled<kColBlock>(xb.M, N, unit, y, dot, unit, span);
}

// int4 activations' layout: the wide AVX-512 kernel's for group 32 where it is built
inline Layout int4_layout(int64_t group) {
  return kWideInt4 && group == 32 ? Layout::Pairs64 : Layout::Pairs32;
}

// per row and group: the sum of its int16 activations (for the zeros' share)
std::vector<float> group_sums(const Int16Rows& xq, int64_t group) {
  const int64_t M = xq.step.size(), groups = xq.K / group;
  std::vector<float> xsum(M * groups);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      int64_t s = 0;
      for (int64_t k = g * group; k < (g + 1) * group; ++k) s += xq.at(m, k);
      xsum[m * groups + g] = static_cast<float>(s);
    }
  return xsum;
}

// The span's columns of y (M, N) = xq (M, K) times the int4 weights' transpose; group a multiple
// of 32 dividing K; xq in int4_layout(group), xsum its group_sums.
void int4_rows(const Int16Rows& xq, const float* xsum, const uint8_t* wp, const float* sp,
               const float* zp, int64_t group, int64_t N, float* y, Span span) {
  const int64_t M = xq.step.size(), K = xq.K, groups = K / group;
  if (M == 0 || span.lo >= span.hi) return;
  const bool wide = kWideInt4 && group == 32;
  auto dot = [&](auto R, auto C, int64_t m, int64_t n, float* out) {
    constexpr int r = decltype(R)::value, c = decltype(C)::value;
    const int16_t* xr = xq.q.data() + m * K;
    const float* xs = xsum + m * groups;
    const uint8_t* w = wp + n * (K / 2);
    if constexpr (kWideInt4) {
      if (wide) return int4_dot32_wide<r, c>(xr, xs, K, w, sp + n * groups, zp + n * groups, out);
    }
    if constexpr (c == 1) {
      if (group == 32)
        int4_dot32<r>(xr, xs, K, w, sp + n * groups, zp + n * groups, out);
      else
        int4_dot<r>(xr, xs, K, w, sp + n * groups, zp + n * groups, group, out);
    }
  };
  auto step = [&](int64_t m) { return xq.step[m]; };
  auto unit = [](int64_t) { return 1.f; };
  if (wide)
    tiled<kColBlock>(M, N, step, y, dot, unit, span);
  else
    tiled<1>(M, N, step, y, dot, unit, span);
}

void int4_product(const float* x, int64_t M, int64_t K, const uint8_t* wp, const float* sp,
                  const float* zp, int64_t group, int64_t N, float* y) {
  if (M == 0 || N == 0) return;
  if (q8_int4() && group == 32) return int4_rows_q8(Int8Blocks(x, M, K), wp, sp, zp, N, y, {0, N});
  const Int16Rows xq(x, M, K, int4_layout(group));
  int4_rows(xq, group_sums(xq, group).data(), wp, sp, zp, group, N, y, {0, N});
}

// A product's input: activation rows on int16 grids in the layout its kernel reads, and for int4
// each row's group sums.
struct ProjInput {
  Int16Rows xq;
  std::vector<float> xsum;
  Int8Blocks xb;  // instead of xq where int4_rows_q8 runs
};

// One projection's weights, int8 (codes int8 (N, K), scale (N)) or int4 (codes uint8 (N, K / 2),
// scale and zero (N, K / group)), checked once.
struct Proj {
  const void* codes;
  const float *scale, *zero;
  int64_t N, group;  // group 0: int8

  ProjInput input(const float* x, int64_t M, int64_t K) const {
    if (group == 0) return {Int16Rows(x, M, K, kInt8Layout), {}};
    if (q8_int4() && group == 32) return {Int16Rows(x, 0, K, kInt8Layout), {}, Int8Blocks(x, M, K)};
    Int16Rows xq(x, M, K, int4_layout(group));
    std::vector<float> xsum = group_sums(xq, group);
    return {std::move(xq), std::move(xsum)};
  }
  // the span's columns of y (rows of the input, N)
  void rows(const ProjInput& in, float* y, Span span) const {
    if (group == 0)
      int8_rows(in.xq, static_cast<const int8_t*>(codes), scale, N, y, span);
    else if (q8_int4() && group == 32)
      int4_rows_q8(in.xb, static_cast<const uint8_t*>(codes), scale, zero, N, y, span);
    else
      int4_rows(in.xq, in.xsum.data(), static_cast<const uint8_t*>(codes), scale, zero, group, N,
                y, span);
  }
};

void check_int4(const at::Tensor& packed, const at::Tensor& scale, const at::Tensor& zero,
                int64_t K, int64_t group, const char* what) {
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte && packed.is_contiguous() &&
                  packed.device().is_cpu() && scale.device().is_cpu() && zero.device().is_cpu(),
              what, ": packed must be a contiguous uint8 CPU matrix");
  TORCH_CHECK(packed.size(1) * 2 == K && group % 32 == 0 && K % group == 0, what,
              ": K must match and the group be a multiple of 32 dividing K");
  for (const at::Tensor* t : {&scale, &zero})
    TORCH_CHECK(t->numel() == packed.size(0) * (K / group) && t->scalar_type() == at::kFloat &&
                    t->is_contiguous(),
                what, ": scale and zero must be contiguous float32 (out, in / group)");
}

// int8 when `codes` is int8 (zero unused), int4 when uint8 (group = K / scale's columns)
Proj proj(const at::Tensor& codes, const at::Tensor& scale, const at::Tensor& zero, int64_t K,
          const char* what) {
  if (codes.scalar_type() == at::kChar) {
    check_int8(codes, scale, K, what);
    return {codes.data_ptr(), scale.data_ptr<float>(), nullptr, codes.size(0), 0};
  }
  TORCH_CHECK(scale.dim() == 2 && scale.size(1) > 0, what, ": int4 scale must be (out, groups)");
  const int64_t group = K / scale.size(1);
  check_int4(codes, scale, zero, K, group, what);
  return {codes.data_ptr(), scale.data_ptr<float>(), zero.data_ptr<float>(), codes.size(0), group};
}

at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                   const at::Tensor& zero, int64_t group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() && x.device().is_cpu(),
              "int4_mm: x must be a contiguous float32 CPU matrix");
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  check_int4(packed, scale, zero, K, group, "int4_mm");
  at::Tensor y = at::empty({M, N}, x.options());
  int4_product(x.data_ptr<float>(), M, K, packed.data_ptr<uint8_t>(), scale.data_ptr<float>(),
               zero.data_ptr<float>(), group, N, y.data_ptr<float>());
  return y;
}

// ---- attention of one new query per row over a contiguous key/value cache ----
// q (B, H, 1, D); k, v (>= B, KV, S, D), the cache; keys 0..pos are visible. One task per
// (row, head): scores, softmax and the weighted sum of values in float32, reading only the
// keys written so far (a compiled step needs no window of the cache, hence no mask).

// e^x as 2^n * p(f), p a degree-6 polynomial on [-ln2/2, ln2/2]; relative error ~2e-7;
// arguments clamped to [-87, 88] (e^-87 is 0 to softmax and SiLU, e^88 near float's limit).
inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 f = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  f = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), f);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(f, f), _mm256_add_ps(f, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline float dot(const float* a, const float* b, int64_t D) {
  __m256 s = _mm256_setzero_ps();
  for (int64_t d = 0; d < D; d += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s);
  return hsum(s);
}

// Where key (or value) j of one kv head lives: rows of a contiguous cache, or the slots of a
// paged pool.
struct Strided {
  const float* base;
  int64_t stride;
  const float* operator()(int64_t j) const { return base + j * stride; }
};
struct Slotted {
  const float* base;
  const int64_t* slots;
  int64_t stride;
  const float* operator()(int64_t j) const { return base + slots[j] * stride; }
};

// The scores of one query against 4 keys: four dot products reduced together.
template <int DV, typename Rows>  // DV = head_dim / 8
inline __m128 dot4(const float* q, const Rows& k, int64_t j) {
  const float* r[4] = {k(j), k(j + 1), k(j + 2), k(j + 3)};
  __m256 a[4];
  for (int i = 0; i < 4; ++i) a[i] = _mm256_setzero_ps();
  for (int d = 0; d < DV; ++d) {
    const __m256 qd = _mm256_loadu_ps(q + 8 * d);
    for (int i = 0; i < 4; ++i) a[i] = _mm256_fmadd_ps(qd, _mm256_loadu_ps(r[i] + 8 * d), a[i]);
  }
  const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

// softmax(q k^T * sc) v for one query over keys 0..L-1 (p: L floats of scratch).
template <int DV, typename Rows>
inline void attend_head(const float* q, const Rows& k, const Rows& v, int64_t L, float sc,
                        float* p, float* out) {
  constexpr int64_t D = 8 * DV;
  int64_t j = 0;
  __m128 top4 = _mm_set1_ps(-INFINITY);
  const __m128 sc4 = _mm_set1_ps(sc);
  for (; j + 4 <= L; j += 4) {
    const __m128 s = _mm_mul_ps(dot4<DV>(q, k, j), sc4);
    _mm_storeu_ps(p + j, s);
    top4 = _mm_max_ps(top4, s);
  }
  float tops[4];
  _mm_storeu_ps(tops, top4);
  float top = std::max(std::max(tops[0], tops[1]), std::max(tops[2], tops[3]));
  for (; j < L; ++j) top = std::max(top, p[j] = dot(q, k(j), D) * sc);
  const __m256 top8 = _mm256_set1_ps(top);
  __m256 total8 = _mm256_setzero_ps();
  j = 0;
  for (; j + 8 <= L; j += 8) {
    const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), top8));
    _mm256_storeu_ps(p + j, e);
    total8 = _mm256_add_ps(total8, e);
  }
  float total = hsum(total8);
  for (; j < L; ++j) total += p[j] = std::exp(p[j] - top);
  __m256 o[DV];
  for (int d = 0; d < DV; ++d) o[d] = _mm256_setzero_ps();
  for (j = 0; j < L; ++j) {
    const __m256 w = _mm256_set1_ps(p[j]);
    const float* vj = v(j);
    for (int d = 0; d < DV; ++d) o[d] = _mm256_fmadd_ps(w, _mm256_loadu_ps(vj + 8 * d), o[d]);
  }
  const __m256 inv = _mm256_set1_ps(1.f / total);
  for (int d = 0; d < DV; ++d) _mm256_storeu_ps(out + 8 * d, _mm256_mul_ps(o[d], inv));
}

// Any head_dim that is a multiple of 8 (the common 64 and 128 take the unrolled path above).
template <typename Rows>
inline void attend_head_any(const float* q, const Rows& k, const Rows& v, int64_t L, int64_t D,
                            float sc, float* p, float* out) {
  float top = -INFINITY;
  for (int64_t j = 0; j < L; ++j) top = std::max(top, p[j] = dot(q, k(j), D) * sc);
  float total = 0.f;
  for (int64_t j = 0; j < L; ++j) total += p[j] = std::exp(p[j] - top);
  std::fill(out, out + D, 0.f);
  for (int64_t j = 0; j < L; ++j) {
    const __m256 w = _mm256_set1_ps(p[j]);
    const float* vj = v(j);
    for (int64_t d = 0; d < D; d += 8)
      _mm256_storeu_ps(out + d, _mm256_fmadd_ps(w, _mm256_loadu_ps(vj + d),
                                                _mm256_loadu_ps(out + d)));
  }
  for (int64_t d = 0; d < D; ++d) out[d] /= total;
}

template <typename Rows>
inline void attend_one(const float* q, const Rows& k, const Rows& v, int64_t L, int64_t D,
                       float sc, float* p, float* out) {
  if (D == 64)
    attend_head<8>(q, k, v, L, sc, p, out);
  else if (D == 128)
    attend_head<16>(q, k, v, L, sc, p, out);
  else
    attend_head_any(q, k, v, L, D, sc, p, out);
}

// a few microseconds of work per head at short contexts: one thread then, as waking the other
// costs about as much
inline int64_t attention_grain(int64_t L, int64_t D) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, L * D));
}

// out (B, H, D) = softmax(q k^T * sc) v over keys 0..L-1 of the cache rows (B.., KV, S, D),
// across the pool's threads or this team thread's share of the (row, head) tasks.
void attend(const float* qp, const float* kp, const float* vp, int64_t B, int64_t H, int64_t KV,
            int64_t S, int64_t D, int64_t L, float sc, float* op, const Team* team = nullptr) {
  const int64_t group = H / KV;
  split(B * H, attention_grain(L, D), team, [&](int64_t t0, int64_t t1) {
    std::vector<float> p(L);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t kv = (t / H * KV + t % H / group) * S * D;
      attend_one(qp + t * D, Strided{kp + kv, D}, Strided{vp + kv, D}, L, D, sc, p.data(),
                 op + t * D);
    }
  });
}

// The one position every row of a contiguous cache is at (read without a dispatcher call).
int64_t position(const at::Tensor& pos, const char* what) {
  TORCH_CHECK(pos.numel() == 1 && pos.device().is_cpu(), what, ": one position for every row");
  return pos.scalar_type() == at::kLong ? *pos.data_ptr<int64_t>() : pos.item<int64_t>();
}

void check_cache(const at::Tensor& k, const at::Tensor& v, int64_t B, int64_t H, int64_t D,
                 int64_t at, const char* what) {
  TORCH_CHECK(k.dim() == 4 && k.sizes() == v.sizes() && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat && k.is_contiguous() && v.is_contiguous() &&
                  k.device().is_cpu() && v.device().is_cpu(),
              what, ": k and v must be contiguous float32 CPU tensors (batch, kv_heads, seq, head_dim)");
  TORCH_CHECK(k.size(0) >= B && k.size(3) == D && H % k.size(1) == 0 && D % 8 == 0,
              what, ": q and the cache disagree (rows, head_dim or head groups)");
  TORCH_CHECK(at >= 0 && at < k.size(2), what, ": position ", at, " outside the cache");
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const at::Tensor& pos, double scale) {
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && q.scalar_type() == at::kFloat && q.device().is_cpu(),
              "decode_attention: q must be float32 on the CPU (batch, heads, 1, head_dim)");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3);
  const int64_t at = position(pos, "decode_attention");
  check_cache(k, v, B, H, D, at, "decode_attention");
  const at::Tensor qc = q.contiguous();
  at::Tensor out = at::empty({B, H, 1, D}, q.options());
  attend(qc.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), B, H, k.size(1),
         k.size(2), D, at + 1, static_cast<float>(scale), out.data_ptr<float>());
  return out;
}

// Where a layer's new keys/values go and what each row attends over: a contiguous cache (every
// row at one position) or the engine's paged pool (each row its own slots).
struct ContiguousCache {
  float *k, *v;
  int64_t KV, S, D, at;
  float* key_row(int64_t b, int64_t j) const { return k + ((b * KV + j) * S + at) * D; }
  float* value_row(int64_t b, int64_t j) const { return v + ((b * KV + j) * S + at) * D; }
  void attend_rows(const float* q, int64_t B, int64_t H, float sc, float* out,
                   const Team* team = nullptr) const {
    attend(q, k, v, B, H, KV, S, D, at + 1, sc, out, team);
  }
};

struct PagedCache {
  float *k, *v;
  int64_t KV, D;
  const int64_t* slot;     // (B,) where each row's new key/value goes
  const int64_t* slots;    // (B, width) the slots each row attends over
  const int64_t* lengths;  // (B,)
  int64_t width, longest;
  float* key_row(int64_t b, int64_t j) const { return k + (slot[b] * KV + j) * D; }
  float* value_row(int64_t b, int64_t j) const { return v + (slot[b] * KV + j) * D; }
  void attend_rows(const float* q, int64_t B, int64_t H, float sc, float* out,
                   const Team* team = nullptr) const {
    const int64_t group = H / KV;
    split(B * H, attention_grain(longest, D), team, [&](int64_t t0, int64_t t1) {
      std::vector<float> p(longest);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / H, j = t % H / group;
        const Slotted keys{k + j * D, slots + b * width, KV * D};
        const Slotted values{v + j * D, slots + b * width, KV * D};
        attend_one(q + t * D, keys, values, lengths[b], D, sc, p.data(), out + t * D);
      }
    });
  }
};

// A paged pool (k, v: (slots, KV, D)) and the slots each of B rows attends over: row b reads
// slots[b, :lengths[b]]; `slot` (may be null: attention only) says where row b's new key/value
// goes. Checks every slot against the pool, so no row reads or writes outside it.
PagedCache paged_cache(const at::Tensor& k, const at::Tensor& v, const int64_t* slot,
                       const at::Tensor& slots, const at::Tensor& lengths, int64_t B, int64_t H,
                       const char* what) {
  TORCH_CHECK(k.dim() == 3 && k.sizes() == v.sizes() && k.scalar_type() == at::kFloat &&
                  v.scalar_type() == at::kFloat && k.is_contiguous() && v.is_contiguous() &&
                  k.device().is_cpu() && v.device().is_cpu(),
              what, ": the pools must be contiguous float32 CPU tensors (slots, kv_heads, head_dim)");
  const int64_t KV = k.size(1), D = k.size(2), pool = k.size(0);
  TORCH_CHECK(H % KV == 0 && D % 8 == 0, what, ": bad head groups or head_dim");
  TORCH_CHECK(slots.dim() == 2 && slots.size(0) == B && slots.scalar_type() == at::kLong &&
                  slots.is_contiguous() && lengths.numel() == B &&
                  lengths.scalar_type() == at::kLong && lengths.is_contiguous(),
              what, ": int64 slots (rows, max_len) and lengths (rows,)");
  const int64_t* sp = slots.data_ptr<int64_t>();
  const int64_t* lp = lengths.data_ptr<int64_t>();
  const int64_t width = slots.size(1);
  int64_t longest = 1;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= width, what, ": bad length ", lp[b]);
    TORCH_CHECK(slot == nullptr || (slot[b] >= 0 && slot[b] < pool), what,
                ": slot outside the pool");
    for (int64_t j = 0; j < lp[b]; ++j)
      TORCH_CHECK(sp[b * width + j] >= 0 && sp[b * width + j] < pool, what,
                  ": slot outside the pool");
    longest = std::max(longest, lp[b]);
  }
  return {k.data_ptr<float>(), v.data_ptr<float>(), KV, D, slot, sp, lp, width, longest};
}

// The serving engine's decode rows: q (B, H, D) over a paged pool (see paged_cache).
at::Tensor paged_decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const at::Tensor& slots, const at::Tensor& lengths,
                                  double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == at::kFloat && q.device().is_cpu(),
              "paged_decode_attention: q must be float32 on the CPU (rows, heads, head_dim)");
  const int64_t B = q.size(0), H = q.size(1);
  const at::Tensor qc = q.contiguous(), sc = slots.contiguous(), lc = lengths.contiguous();
  const PagedCache cache = paged_cache(k, v, nullptr, sc, lc, B, H, "paged_decode_attention");
  TORCH_CHECK(q.size(2) == cache.D, "paged_decode_attention: q and the pool disagree (head_dim)");
  at::Tensor out = at::empty({B, H, cache.D}, q.options());
  cache.attend_rows(qc.data_ptr<float>(), B, H, static_cast<float>(scale), out.data_ptr<float>());
  return out;
}

// ---- a stack of decoder layers for one new token per row (int8/int4 weights) ----
// x (B, dim) -> x after every layer, each as TransformerBlock computes it: RMSNorm, q/k/v in one
// product, RoPE on adjacent pairs, this position's keys/values written into the cache, attention
// over the keys so far, wo; RMSNorm, w1/w3 in one product, SiLU(gate) * up, w2. The whole stack
// is one call and one parallel region (instead of ~9 operator calls a layer, each a few
// microseconds of dispatch around little work); its threads split every product by weight rows
// and meet at a barrier where the next phase needs all of the last one's output.

// out[m] = x[m] / sqrt(mean(x[m]^2) + eps) * w for rows of K floats, as RMSNorm computes it in
// float32 (x times the reciprocal, then times w); the sum of squares in double.
void rms_norm(const float* x, const float* w, float eps, int64_t M, int64_t K, float* out) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * K;
    float* o = out + m * K;
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
      const __m256 v = _mm256_loadu_ps(xr + k);
      const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
      const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
      s0 = _mm256_fmadd_pd(lo, lo, s0);
      s1 = _mm256_fmadd_pd(hi, hi, s1);
    }
    double parts[4];
    _mm256_storeu_pd(parts, _mm256_add_pd(s0, s1));
    double ss = (parts[0] + parts[1]) + (parts[2] + parts[3]);
    for (int64_t j = k; j < K; ++j) ss += static_cast<double>(xr[j]) * xr[j];
    const float r = 1.f / std::sqrt(static_cast<float>(ss / K) + eps);
    const __m256 rv = _mm256_set1_ps(r);
    for (k = 0; k + 8 <= K; k += 8)
      _mm256_storeu_ps(o + k, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(xr + k), rv),
                                            _mm256_loadu_ps(w + k)));
    for (; k < K; ++k) o[k] = xr[k] * r * w[k];
  }
}

// Rotates adjacent pairs (x[2i], x[2i+1]) of each of `heads` heads (D floats each, D a multiple
// of 8) by the angles (c[i], s[i]) into out (which may be x): (x0 c - x1 s, x1 c + x0 s), four
// pairs per vector.
void rope(const float* x, float* out, int64_t heads, int64_t D, const float* c, const float* s) {
  const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
  for (int64_t i = 0; i < D / 2; i += 4) {
    const __m256 cv = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(c + i)), dup);
    const __m256 sv = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(s + i)), dup);
    for (int64_t h = 0; h < heads; ++h) {
      const __m256 v = _mm256_loadu_ps(x + h * D + 2 * i);
      const __m256 swapped = _mm256_permute_ps(v, 0xB1);  // (x1, x0) per pair
      _mm256_storeu_ps(out + h * D + 2 * i,
                       _mm256_fmaddsub_ps(v, cv, _mm256_mul_ps(swapped, sv)));
    }
  }
}

struct LayerWeights {
  const float *attn_norm, *ffn_norm;
  float eps;
  Proj wqkv, wo, w13, w2;
  int64_t F;  // hidden size of the feed-forward
};

// parts: codes, scale, zero of wqkv, wo, w13, w2 (zero: any tensor for int8)
LayerWeights layer_weights(const at::Tensor& x, const at::Tensor& attn_norm,
                           const at::Tensor& ffn_norm, double eps, at::TensorList parts, int64_t H,
                           int64_t KV, int64_t D) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous() &&
                  x.device().is_cpu(),
              "decode_layers: x must be a contiguous float32 (rows, dim) CPU matrix");
  TORCH_CHECK(parts.size() == 12, "decode_layers: proj holds codes, scale, zero of 4 projections");
  const int64_t dim = x.size(1), F = parts[6].size(0) / 2;
  const Proj wqkv = proj(parts[0], parts[1], parts[2], dim, "decode_layers wqkv");
  const Proj wo = proj(parts[3], parts[4], parts[5], H * D, "decode_layers wo");
  const Proj w13 = proj(parts[6], parts[7], parts[8], dim, "decode_layers w13");
  const Proj w2 = proj(parts[9], parts[10], parts[11], F, "decode_layers w2");
  TORCH_CHECK(wqkv.N == (H + 2 * KV) * D && wo.N == dim && w2.N == dim,
              "decode_layers: projection shapes disagree with the heads and dim");
  for (const at::Tensor* t : {&attn_norm, &ffn_norm})
    TORCH_CHECK(t->numel() == dim && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "decode_layers: norm weights must be contiguous float32 of size dim");
  return {attn_norm.data_ptr<float>(), ffn_norm.data_ptr<float>(), static_cast<float>(eps),
          wqkv, wo, w13, w2, F};
}

// act[b, i] = silu(gate) * up = gate * up / (1 + e^-gate) for i in [i0, i1); g's rows hold the
// gate then the up values (2F). i0 a multiple of 8: a value's arithmetic never depends on the
// split.
void swiglu_rows(const float* g, float* act, int64_t B, int64_t F, int64_t i0, int64_t i1) {
  for (int64_t b = 0; b < B; ++b) {
    const float* gate = g + b * 2 * F;
    const float* up = gate + F;
    float* a = act + b * F;
    int64_t i = i0;
    for (; i + 8 <= i1; i += 8) {
      const __m256 gv = _mm256_loadu_ps(gate + i);
      const __m256 den =
          _mm256_add_ps(_mm256_set1_ps(1.f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv)));
      _mm256_storeu_ps(a + i, _mm256_div_ps(_mm256_mul_ps(gv, _mm256_loadu_ps(up + i)), den));
    }
    for (; i < i1; ++i) a[i] = gate[i] / (1.f + std::exp(-gate[i])) * up[i];
  }
}

// h[b, n] += y[b, n] for the columns n in [n0, n1) of (B, dim) matrices
void add_columns(float* h, const float* y, int64_t B, int64_t dim, int64_t n0, int64_t n1) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t n = n0; n < n1; ++n) h[b * dim + n] += y[b * dim + n];
}

// The model's final norm and output projection, when the stack ends in logits.
struct Head {
  const float* norm;
  Proj proj;
};

// cos/sin: (B, D/2), each row's angles; cache_at(l): layer l's cache. Returns x after the layers,
// or with a head the logits (B, vocab) of the final norm of that.
template <typename CacheAt>
at::Tensor stack(const at::Tensor& x, const std::vector<LayerWeights>& layers, const float* cos,
                 const float* sin, const CacheAt& cache_at, int64_t H, int64_t KV, int64_t D,
                 const std::optional<Head>& head) {
  const int64_t B = x.size(0), dim = x.size(1), QKV = (H + 2 * KV) * D;
  int64_t F = 0;
  for (const LayerWeights& w : layers) F = std::max(F, w.F);
  at::Tensor out = x.clone();
  float* h = out.data_ptr<float>();
  at::Tensor logits = head ? at::empty({B, head->proj.N}, x.options()) : out;
  std::vector<float> qkv(B * QKV), q(B * H * D), attn(B * H * D), y(B * dim), g(B * 2 * F),
      act(B * F);
  const float sc = 1.f / std::sqrt(static_cast<float>(D));
  auto run = [&](const Team& team) {
    std::vector<float> xn(B * dim);  // each thread normalizes for itself: no barrier after
    const auto [o0, o1] = team.share(dim, kOutBlock);  // its columns of wo and w2
    const auto [j0, j1] = team.share(H + 2 * KV, 1);   // its q/k/v heads
    for (size_t l = 0; l < layers.size(); ++l) {
      const LayerWeights& w = layers[l];
      const auto cache = cache_at(l);
      rms_norm(h, w.attn_norm, w.eps, B, dim, xn.data());
      w.wqkv.rows(w.wqkv.input(xn.data(), B, dim), qkv.data(), {j0 * D, j1 * D, &team});
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = j0; j < j1; ++j) {  // RoPE on its q and k heads; k and v into the cache
          float* r = qkv.data() + b * QKV + j * D;
          if (j < H + KV) rope(r, r, 1, D, cos + b * D / 2, sin + b * D / 2);
          float* to = j < H        ? q.data() + (b * H + j) * D
                      : j < H + KV ? cache.key_row(b, j - H)
                                   : cache.value_row(b, j - H - KV);
          std::copy(r, r + D, to);
        }
      team.sync();
      cache.attend_rows(q.data(), B, H, sc, attn.data(), &team);
      team.sync();
      w.wo.rows(w.wo.input(attn.data(), B, H * D), y.data(), {o0, o1, &team});
      add_columns(h, y.data(), B, dim, o0, o1);
      team.sync();
      rms_norm(h, w.ffn_norm, w.eps, B, dim, xn.data());
      const auto [f0, f1] = team.share(w.F, kOutBlock);  // its gate and up rows, then SiLU
      const ProjInput in = w.w13.input(xn.data(), B, dim);
      w.w13.rows(in, g.data(), {f0, f1, &team});
      w.w13.rows(in, g.data(), {w.F + f0, w.F + f1, &team});
      swiglu_rows(g.data(), act.data(), B, w.F, f0, f1);
      team.sync();
      w.w2.rows(w.w2.input(act.data(), B, w.F), y.data(), {o0, o1, &team});
      add_columns(h, y.data(), B, dim, o0, o1);
      team.sync();
    }
    if (head) {  // the last layer's barrier passed: h is whole
      rms_norm(h, head->norm, layers.back().eps, B, dim, xn.data());
      const auto [v0, v1] = team.share(head->proj.N, kOutBlock);
      head->proj.rows(head->proj.input(xn.data(), B, dim), logits.data_ptr<float>(),
                      {v0, v1, &team});
    }
  };
  const int64_t T = at::get_num_threads();
  if (T <= 1) {
    run(Team{});
  } else {
#pragma omp parallel num_threads(T)
    run(Team{omp_get_thread_num(), omp_get_num_threads()});
  }
  return logits;
}

// head: empty, or the final norm's weight and the output projection's codes, scale and zero
std::optional<Head> stack_head(at::TensorList head, int64_t dim) {
  if (head.empty()) return std::nullopt;
  TORCH_CHECK(head.size() == 4, "decode_layers: head holds the final norm, codes, scale, zero");
  TORCH_CHECK(head[0].numel() == dim && head[0].scalar_type() == at::kFloat &&
                  head[0].is_contiguous(),
              "decode_layers: the final norm's weight must be contiguous float32 of size dim");
  return Head{head[0].data_ptr<float>(), proj(head[1], head[2], head[3], dim, "decode_layers head")};
}

// norms: attention and feed-forward norm of each layer; proj: codes, scale, zero of wqkv, wo,
// w13, w2 of each layer.
std::vector<LayerWeights> stack_weights(const at::Tensor& x, at::TensorList norms, double eps,
                                        at::TensorList proj, int64_t H, int64_t KV, int64_t D,
                                        size_t n_layers) {
  TORCH_CHECK(n_layers > 0 && norms.size() == 2 * n_layers && proj.size() == 12 * n_layers,
              "decode_layers: two norms, four projections (codes, scale, zero each) and a "
              "cache per layer");
  std::vector<LayerWeights> layers;
  for (size_t l = 0; l < n_layers; ++l)
    layers.push_back(layer_weights(x, norms[2 * l], norms[2 * l + 1], eps, proj.slice(12 * l, 12),
                                   H, KV, D));
  return layers;
}

// A step's input rows: each token's embedding (a float32 table's row, or int8 codes times the
// row's scale, as Int8Embedding computes it) and its position's rotation angles (float(pos) times
// each inverse frequency, as rope_cos_sin computes them); one call instead of ~10 small ops.
struct StepInput {
  at::Tensor x;                 // (B, dim) float32
  std::vector<float> cos, sin;  // (B, D/2)
};

StepInput step_input(const at::Tensor& tokens, at::TensorList embedding,
                     const at::Tensor& inv_freq, const int64_t* pos, bool per_row, int64_t D,
                     const char* what) {
  TORCH_CHECK(tokens.scalar_type() == at::kLong && tokens.is_contiguous() && tokens.device().is_cpu(),
              what, ": token ids must be contiguous int64 on the CPU");
  TORCH_CHECK(inv_freq.numel() == D / 2 && inv_freq.scalar_type() == at::kFloat &&
                  inv_freq.is_contiguous(),
              what, ": inv_freq must be contiguous float32 (head_dim / 2)");
  const bool int8 = embedding.size() == 2;
  TORCH_CHECK((embedding.size() == 1 || int8) && embedding[0].dim() == 2 &&
                  embedding[0].is_contiguous() && embedding[0].device().is_cpu() &&
                  embedding[0].scalar_type() == (int8 ? at::kChar : at::kFloat),
              what, ": embedding is a float32 table, or int8 codes and their row scales");
  const int64_t B = tokens.numel(), V = embedding[0].size(0), dim = embedding[0].size(1);
  if (int8)
    TORCH_CHECK(embedding[1].numel() == V && embedding[1].scalar_type() == at::kFloat &&
                    embedding[1].is_contiguous(),
                what, ": one float32 scale per embedding row");
  StepInput in{at::empty({B, dim}, inv_freq.options()), std::vector<float>(B * D / 2),
               std::vector<float>(B * D / 2)};
  const int64_t* ids = tokens.data_ptr<int64_t>();
  float* x = in.x.data_ptr<float>();
  const float* inv = inv_freq.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t id = ids[b];
    TORCH_CHECK(id >= 0 && id < V, what, ": token id ", id, " outside the vocabulary (", V, ")");
    if (int8) {
      const int8_t* row = embedding[0].data_ptr<int8_t>() + id * dim;
      const float scale = embedding[1].data_ptr<float>()[id];
      for (int64_t k = 0; k < dim; ++k) x[b * dim + k] = static_cast<float>(row[k]) * scale;
    } else {
      const float* row = embedding[0].data_ptr<float>() + id * dim;
      std::copy(row, row + dim, x + b * dim);
    }
    const float p = static_cast<float>(pos[per_row ? b : 0]);
    for (int64_t i = 0; i < D / 2; ++i) {
      const float angle = p * inv[i];
      in.cos[b * D / 2 + i] = std::cos(angle);
      in.sin[b * D / 2 + i] = std::sin(angle);
    }
  }
  return in;
}

// tokens (B,), every row at position `pos` of a contiguous cache (batch, kv_heads, seq, head_dim)
// per layer
at::Tensor decode_layers(const at::Tensor& tokens, at::TensorList embedding,
                         const at::Tensor& inv_freq, at::TensorList norms, double eps,
                         at::TensorList proj, at::TensorList k_cache, at::TensorList v_cache,
                         const at::Tensor& pos, int64_t n_heads, at::TensorList head) {
  TORCH_CHECK(!k_cache.empty() && k_cache.size() == v_cache.size(),
              "decode_layers: one key and one value cache per layer");
  const int64_t B = tokens.numel(), H = n_heads, D = k_cache[0].size(-1), KV = k_cache[0].size(1);
  const int64_t at = position(pos, "decode_layers");
  for (size_t l = 0; l < k_cache.size(); ++l) {
    check_cache(k_cache[l], v_cache[l], B, H, D, at, "decode_layers");
    TORCH_CHECK(k_cache[l].sizes() == k_cache[0].sizes(), "decode_layers: caches differ in shape");
  }
  const StepInput in = step_input(tokens, embedding, inv_freq, &at, false, D, "decode_layers");
  const std::vector<LayerWeights> layers =
      stack_weights(in.x, norms, eps, proj, H, KV, D, k_cache.size());
  const int64_t S = k_cache[0].size(2);
  auto cache_at = [&](size_t l) {
    return ContiguousCache{k_cache[l].data_ptr<float>(), v_cache[l].data_ptr<float>(), KV, S, D,
                           at};
  };
  return stack(in.x, layers, in.cos.data(), in.sin.data(), cache_at, H, KV, D,
               stack_head(head, in.x.size(1)));
}

// The engine's decode-only steps: row b (token b at positions[b]) writes its key/value at pool
// slot `slot[b]` and attends over slots[b, :lengths[b]] (this step's slot included), in every
// layer's pool.
at::Tensor paged_decode_layers(const at::Tensor& tokens, at::TensorList embedding,
                               const at::Tensor& inv_freq, const at::Tensor& positions,
                               at::TensorList norms, double eps, at::TensorList proj,
                               at::TensorList k_pool, at::TensorList v_pool,
                               const at::Tensor& slot, const at::Tensor& slots,
                               const at::Tensor& lengths, int64_t n_heads, at::TensorList head) {
  const int64_t B = tokens.numel(), H = n_heads;
  TORCH_CHECK(!k_pool.empty() && k_pool.size() == v_pool.size(),
              "paged_decode_layers: one key and one value pool per layer");
  TORCH_CHECK(slot.numel() == B && slot.scalar_type() == at::kLong && slot.is_contiguous(),
              "paged_decode_layers: int64 slot (rows,)");
  TORCH_CHECK(positions.numel() == B && positions.scalar_type() == at::kLong &&
                  positions.is_contiguous(),
              "paged_decode_layers: int64 positions (rows,)");
  const PagedCache first = paged_cache(k_pool[0], v_pool[0], slot.data_ptr<int64_t>(), slots,
                                       lengths, B, H, "paged_decode_layers");
  for (size_t l = 0; l < k_pool.size(); ++l)
    for (const at::Tensor* t : {&k_pool[l], &v_pool[l]})
      TORCH_CHECK(t->sizes() == k_pool[0].sizes() && t->scalar_type() == at::kFloat &&
                      t->is_contiguous() && t->device().is_cpu(),
                  "paged_decode_layers: every layer's pools like the first (contiguous float32)");
  const int64_t KV = first.KV, D = first.D;
  const StepInput in = step_input(tokens, embedding, inv_freq, positions.data_ptr<int64_t>(),
                                  true, D, "paged_decode_layers");
  const std::vector<LayerWeights> layers =
      stack_weights(in.x, norms, eps, proj, H, KV, D, k_pool.size());
  auto cache_at = [&](size_t l) {
    PagedCache c = first;
    c.k = k_pool[l].data_ptr<float>();
    c.v = v_pool[l].data_ptr<float>();
    return c;
  };
  return stack(in.x, layers, in.cos.data(), in.sin.data(), cache_at, H, KV, D,
               stack_head(head, in.x.size(1)));
}

// ---- a prompt's RMSNorm and RoPE: one pass each instead of PyTorch's ~6 elementwise ops ----

at::Tensor rms_norm_op(const at::Tensor& x, const at::Tensor& w, double eps) {
  const int64_t K = x.size(-1);
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && w.numel() == K &&
                  w.scalar_type() == at::kFloat && w.is_contiguous(),
              "rms_norm: float32 CPU rows and a float32 weight of their size");
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc);
  const float *xp = xc.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, xc.numel() / std::max<int64_t>(K, 1), std::max<int64_t>(1, 16384 / K),
                   [&](int64_t m0, int64_t m1) {
    rms_norm(xp + m0 * K, wp, static_cast<float>(eps), m1 - m0, K, op + m0 * K);
  });
  return out;
}

// x (B, T, H, D) float32, its heads contiguous per position (a view of a fused q/k/v product
// is fine); cos, sin (T, D/2) or (B, T, D/2). Returns the rotated x, contiguous.
at::Tensor rope_op(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.device().is_cpu() &&
                  x.stride(3) == 1 && x.stride(2) == x.size(3) && x.size(3) % 8 == 0,
              "rope: x must be float32 (batch, seq, heads, head_dim) with contiguous heads and "
              "head_dim a multiple of 8");
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  for (const at::Tensor* t : {&cos, &sin})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() &&
                    (t->numel() == T * D / 2 || t->numel() == B * T * D / 2),
                "rope: cos and sin must be contiguous float32 (seq, head_dim / 2) or (batch, seq, "
                "head_dim / 2)");
  const int64_t per_row = cos.numel() == T * D / 2 ? 0 : T * D / 2;  // angles per batch row?
  at::Tensor out = at::empty({B, T, H, D}, x.options());
  const float *xp = x.data_ptr<float>(), *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * T, std::max<int64_t>(1, 4096 / (H * D)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / T, t = p % T, a = b * per_row + t * D / 2;
      rope(xp + b * x.stride(0) + t * x.stride(1), op + p * H * D, H, D, cp + a, sp + a);
    }
  });
  return out;
}

// ---- the index of each row's largest value (greedy decoding) ----
// The first of tied maxima, a NaN counting as the largest (torch.argmax's rule): one pass for the
// maximum (and whether a NaN is there), one for its first index; ~10x faster than torch.max's
// index reduction on a 49k-vocabulary row.

int64_t argmax_row(const float* x, int64_t n) {
  __m256 best = _mm256_set1_ps(-INFINITY);
  __m256 nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    best = _mm256_max_ps(best, v);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, best);
  float top = lanes[0];
  for (int j = 1; j < 8; ++j) top = std::max(top, lanes[j]);
  bool any_nan = _mm256_movemask_ps(nan) != 0;
  for (int64_t j = i; j < n; ++j) {
    any_nan |= std::isnan(x[j]);
    top = std::max(top, x[j]);
  }
  if (any_nan) {
    for (int64_t j = 0; j < n; ++j)
      if (std::isnan(x[j])) return j;
  }
  const __m256 t = _mm256_set1_ps(top);
  for (i = 0; i + 8 <= n; i += 8)
    if (const int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), t, _CMP_EQ_OQ)))
      return i + __builtin_ctz(m);
  for (; i < n; ++i)
    if (x[i] == top) return i;
  return 0;  // an empty row (never asked) or only -inf: the first index, as torch's rule gives
}

at::Tensor argmax_rows(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.device().is_cpu() &&
                  x.stride(1) == 1 && x.size(1) > 0,
              "argmax_rows: x must be a float32 CPU matrix with contiguous, non-empty rows");
  at::Tensor out = at::empty({x.size(0)}, x.options().dtype(at::kLong));
  const float* p = x.data_ptr<float>();
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t r = 0; r < x.size(0); ++r) o[r] = argmax_row(p + r * x.stride(0), x.size(1));
  return out;
}

// ---- bfloat16 <-> float32, 8 at a time and one at a time ----

inline __m256 widen8(const uint16_t* a) {
  __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}

// 8 floats to bfloat16, rounded to nearest even
inline __m128i narrow8(__m256 v) {
  __m256i b = _mm256_castps_si256(v);
  __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
  b = _mm256_srli_epi32(_mm256_add_epi32(b, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  return _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
}

inline uint16_t narrow1(float v) {
  uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return static_cast<uint16_t>((b + 0x7FFF + ((b >> 16) & 1)) >> 16);
}

inline float widen1(uint16_t a) {
  uint32_t b = static_cast<uint32_t>(a) << 16;
  float v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

// A prompt's RMSNorm whose output feeds bfloat16 products (quant.bf16_rows): (h, normed) with
// h = x + residual (x itself without one) and normed = rms_norm(h) rounded to bfloat16 (to
// nearest even, as PyTorch's conversion), the float32 rows never written: one pass where the
// residual add, the norm and the products' conversion of their input were three.
std::tuple<at::Tensor, at::Tensor> rms_norm_bf16(const at::Tensor& x,
                                                 const std::optional<at::Tensor>& residual,
                                                 const at::Tensor& w, double eps) {
  const int64_t K = x.size(-1);
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu() && w.numel() == K &&
                  w.scalar_type() == at::kFloat && w.is_contiguous(),
              "rms_norm_bf16: float32 CPU rows and a float32 weight of their size");
  TORCH_CHECK(!residual || (residual->sizes() == x.sizes() &&
                            residual->scalar_type() == at::kFloat && residual->device().is_cpu()),
              "rms_norm_bf16: the residual must be float32 CPU rows of x's shape");
  const at::Tensor xc = x.contiguous();
  at::Tensor h = residual ? at::empty_like(xc) : xc;
  const at::Tensor rc = residual ? residual->contiguous() : xc;
  at::Tensor normed = at::empty(xc.sizes(), xc.options().dtype(at::kBFloat16));
  const float *xp = xc.data_ptr<float>(), *rp = rc.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* hp = h.data_ptr<float>();
  uint16_t* np = reinterpret_cast<uint16_t*>(normed.data_ptr<at::BFloat16>());
  const bool add = residual.has_value();
  at::parallel_for(0, xc.numel() / std::max<int64_t>(K, 1), std::max<int64_t>(1, 16384 / K),
                   [&](int64_t m0, int64_t m1) {
    std::vector<float> row(K);
    for (int64_t m = m0; m < m1; ++m) {
      float* hr = hp + m * K;
      if (add)
        for (int64_t k = 0; k < K; ++k) hr[k] = xp[m * K + k] + rp[m * K + k];
      rms_norm(hr, wp, static_cast<float>(eps), 1, K, row.data());
      uint16_t* o = np + m * K;
      int64_t k = 0;
      for (; k + 8 <= K; k += 8)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(o + k), narrow8(_mm256_loadu_ps(row.data() + k)));
      for (; k < K; ++k) o[k] = narrow1(row[k]);
    }
  });
  return {h, normed};
}

// ---- bfloat16 products' outputs widened to float32 and scaled per column, in one pass ----
// out[m, n] = float(part[m, n]) * scale[n]: a prompt's bfloat16 products (quant.bf16_rows) come
// back as bfloat16 and their int8 codes' row scales apply per column. PyTorch's mixed-dtype
// multiply converts into a temporary first (two passes); here a bfloat16 widens by a 16-bit shift.
// `out` may be a column slice of a wider matrix (row stride ldo).

void scale_columns(const at::Tensor& part, const at::Tensor& scale, at::Tensor& out) {
  TORCH_CHECK(part.dim() == 2 && part.scalar_type() == at::kBFloat16 && part.is_contiguous() &&
                  part.device().is_cpu(),
              "scale_columns: part must be a contiguous bfloat16 CPU matrix");
  const int64_t M = part.size(0), N = part.size(1);
  TORCH_CHECK(scale.dim() == 1 && scale.size(0) == N && scale.scalar_type() == at::kFloat &&
                  scale.is_contiguous(),
              "scale_columns: scale must be a contiguous float32 vector, one per column");
  TORCH_CHECK(out.dim() == 2 && out.size(0) == M && out.size(1) == N &&
                  out.scalar_type() == at::kFloat && out.stride(1) == 1,
              "scale_columns: out must be float32 (M, N) with unit column stride");
  const uint16_t* src = reinterpret_cast<const uint16_t*>(part.data_ptr<at::BFloat16>());
  const float* sc = scale.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const int64_t ldo = out.stride(0);
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1)),
                   [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const uint16_t* a = src + m * N;
      float* o = dst + m * ldo;
      int64_t n = 0;
#if defined(__AVX512F__)
      for (; n + 16 <= N; n += 16)
        _mm512_storeu_ps(o + n, _mm512_mul_ps(widen16(a + n), _mm512_loadu_ps(sc + n)));
#endif
      for (; n + 8 <= N; n += 8) _mm256_storeu_ps(o + n, _mm256_mul_ps(widen8(a + n), _mm256_loadu_ps(sc + n)));
      for (; n < N; ++n) o[n] = widen1(a[n]) * sc[n];
    }
  });
}

// ---- a prompt's SwiGLU from the bfloat16 products of a fused w1/w3 layer ----
// out[m, n] = bf16(silu(gate[m, n] * gs[n]) * (up[m, n] * us[n])): the gate and up products come
// back from the bfloat16 GEMM as bfloat16 and w2's product takes bfloat16, so the float32
// activations (scaled, SiLU, product, each a pass over a fresh matrix) are never written.
// Rounding to bfloat16 is to nearest even, as PyTorch's conversion. Rows may be strided.

void check_bf16_rows(const at::Tensor& t, int64_t M, int64_t N, const char* what) {
  TORCH_CHECK(t.dim() == 2 && t.size(0) == M && t.size(1) == N &&
                  t.scalar_type() == at::kBFloat16 && t.stride(1) == 1 && t.device().is_cpu(),
              "swiglu_bf16: ", what, " must be a bfloat16 CPU matrix (", M, ", ", N,
              ") with unit column stride");
}

void swiglu_bf16(const at::Tensor& gate, const at::Tensor& up, const at::Tensor& gscale,
                 const at::Tensor& uscale, at::Tensor& out) {
  const int64_t M = gate.size(0), N = gate.size(1);
  check_bf16_rows(gate, M, N, "gate");
  check_bf16_rows(up, M, N, "up");
  check_bf16_rows(out, M, N, "out");
  for (const at::Tensor* s : {&gscale, &uscale})
    TORCH_CHECK(s->dim() == 1 && s->size(0) == N && s->scalar_type() == at::kFloat &&
                    s->is_contiguous(),
                "swiglu_bf16: scales must be contiguous float32 vectors, one per column");
  auto bits = [](const at::Tensor& t) {
    return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
  };
  const uint16_t *g = bits(gate), *u = bits(up);
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const float *gs = gscale.data_ptr<float>(), *us = uscale.data_ptr<float>();
  const int64_t ldg = gate.stride(0), ldu = up.stride(0), ldo = out.stride(0);
  at::parallel_for(0, M, std::max<int64_t>(1, 4096 / std::max<int64_t>(N, 1)),
                   [&](int64_t m0, int64_t m1) {
    const __m256 one = _mm256_set1_ps(1.f);
    for (int64_t m = m0; m < m1; ++m) {
      const uint16_t *gr = g + m * ldg, *ur = u + m * ldu;
      uint16_t* orow = o + m * ldo;
      int64_t n = 0;
#if defined(__AVX512F__) && defined(__AVX512BF16__)
      for (; n + 16 <= N; n += 16) {  // SiLU(a) = a / (1 + 2^(-a log2 e))
        const __m512 a = _mm512_mul_ps(widen16(gr + n), _mm512_loadu_ps(gs + n));
        const __m512 b = _mm512_mul_ps(widen16(ur + n), _mm512_loadu_ps(us + n));
        const __m512 e = exp2_16(_mm512_mul_ps(a, _mm512_set1_ps(-1.44269504f)));
        const __m512 silu = _mm512_div_ps(a, _mm512_add_ps(_mm512_set1_ps(1.f), e));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(orow + n),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_mul_ps(silu, b)));
      }
#endif
      for (; n + 8 <= N; n += 8) {
        __m256 a = _mm256_mul_ps(widen8(gr + n), _mm256_loadu_ps(gs + n));
        __m256 b = _mm256_mul_ps(widen8(ur + n), _mm256_loadu_ps(us + n));
        __m256 silu = _mm256_div_ps(a, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), a))));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(orow + n), narrow8(_mm256_mul_ps(silu, b)));
      }
      for (; n < N; ++n) {
        const float a = widen1(gr[n]) * gs[n], b = widen1(ur[n]) * us[n];
        orow[n] = narrow1(a / (1.f + std::exp(-a)) * b);
      }
    }
  });
}

// ---- int4 rows dequantized straight to bfloat16, for a prompt's bfloat16 products ----
// w[n, k] = code * scale[n, k / group] + zero[n, k / group], rounded to bfloat16: one pass over the
// packed codes instead of PyTorch's nibble masks, float32 slab, group affine and conversion. The
// float32 value is the same as the eager path's (a product, then a sum: no fused multiply-add).

at::Tensor int4_rows_bf16(const at::Tensor& packed, const at::Tensor& scale,
                          const at::Tensor& zero, int64_t group) {
  const int64_t N = packed.size(0), K = packed.size(1) * 2;
  check_int4(packed, scale, zero, K, group, "int4_rows_bf16");
  at::Tensor out = at::empty({N, K}, packed.options().dtype(at::kBFloat16));
  const uint8_t* src = packed.data_ptr<uint8_t>();
  const float *sc = scale.data_ptr<float>(), *zr = zero.data_ptr<float>();
  uint16_t* dst = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  const int64_t G = K / group;
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / K), [&](int64_t n0, int64_t n1) {
    const __m128i low = _mm_set1_epi8(0x0F);
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* p = src + n * (K / 2);
      uint16_t* o = dst + n * K;
      for (int64_t g = 0; g < G; ++g) {
        const __m256 s = _mm256_set1_ps(sc[n * G + g]), z = _mm256_set1_ps(zr[n * G + g]);
        for (int64_t k = g * group; k < (g + 1) * group; k += 16) {
          const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + k / 2));
          const __m128i lo = _mm_and_si128(b, low), hi = _mm_and_si128(_mm_srli_epi16(b, 4), low);
          const __m128i codes = _mm_unpacklo_epi8(lo, hi);  // weights k .. k + 15 in order
          for (int h = 0; h < 2; ++h) {
            const __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(h ? _mm_srli_si128(codes, 8) : codes));
            volatile __m256 prod = _mm256_mul_ps(c, s);  // no contraction into an FMA
            _mm_storeu_si128(reinterpret_cast<__m128i*>(o + k + 8 * h), narrow8(_mm256_add_ps(prod, z)));
          }
        }
      }
    }
  });
  return out;
}

// ---- int8 codes to bfloat16, for a prompt's bfloat16 products ----
// Exact: an int8's float has at most 8 significant bits, so its bfloat16 is the float's upper
// half. One pass, 16 codes a step, where PyTorch's conversion took 2-4x as long.

at::Tensor int8_rows_bf16(const at::Tensor& codes) {
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kChar && codes.is_contiguous() &&
                  codes.device().is_cpu(),
              "int8_rows_bf16: codes must be a contiguous int8 CPU matrix");
  at::Tensor out = at::empty(codes.sizes(), codes.options().dtype(at::kBFloat16));
  const int8_t* src = codes.data_ptr<int8_t>();
  uint16_t* dst = reinterpret_cast<uint16_t*>(out.data_ptr<at::BFloat16>());
  at::parallel_for(0, codes.numel(), 1 << 16, [&](int64_t i0, int64_t i1) {
    int64_t i = i0;
    auto upper = [](const int8_t* p) {  // 8 codes' floats, upper halves in the low 16 bits
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
      return _mm256_srli_epi32(_mm256_castps_si256(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))), 16);
    };
    for (; i + 16 <= i1; i += 16) {  // packus interleaves 128-bit lanes; the permute restores order
      const __m256i both = _mm256_packus_epi32(upper(src + i), upper(src + i + 8));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm256_permute4x64_epi64(both, 0xD8));
    }
    for (; i < i1; ++i) dst[i] = narrow1(static_cast<float>(src[i]));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY(llama3_kernels, m) {
  m.def("int8_mm(Tensor x, Tensor codes, Tensor scale) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rms_norm_bf16(Tensor x, Tensor? residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("argmax_rows(Tensor x) -> Tensor");
  m.def("scale_columns(Tensor part, Tensor scale, Tensor(a!) out) -> ()");
  m.def("int4_rows_bf16(Tensor packed, Tensor scale, Tensor zero, int group) -> Tensor");
  m.def("int8_rows_bf16(Tensor codes) -> Tensor");
  m.def("swiglu_bf16(Tensor gate, Tensor up, Tensor gscale, Tensor uscale, Tensor(a!) out) -> ()");
  m.def("int4_mm(Tensor x, Tensor packed, Tensor scale, Tensor zero, int group) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor pos, float scale) -> Tensor");
  m.def(
      "paged_decode_attention(Tensor q, Tensor k, Tensor v, Tensor slots, Tensor lengths, "
      "float scale) -> Tensor");
  m.def(
      "decode_layers(Tensor tokens, Tensor[] embedding, Tensor inv_freq, Tensor[] norms, "
      "float eps, Tensor[] proj, Tensor(a!)[] k_cache, Tensor(b!)[] v_cache, Tensor pos, "
      "int n_heads, Tensor[] head) -> Tensor");
  m.def(
      "paged_decode_layers(Tensor tokens, Tensor[] embedding, Tensor inv_freq, Tensor positions, "
      "Tensor[] norms, float eps, Tensor[] proj, Tensor(a!)[] k_pool, Tensor(b!)[] v_pool, "
      "Tensor slot, Tensor slots, Tensor lengths, int n_heads, Tensor[] head) -> Tensor");
}

TORCH_LIBRARY_IMPL(llama3_kernels, CPU, m) {
  m.impl("int8_mm", &int8_mm);
  m.impl("rms_norm", &rms_norm_op);
  m.impl("rms_norm_bf16", &rms_norm_bf16);
  m.impl("rope", &rope_op);
  m.impl("argmax_rows", &argmax_rows);
  m.impl("scale_columns", &scale_columns);
  m.impl("int4_rows_bf16", &int4_rows_bf16);
  m.impl("int8_rows_bf16", &int8_rows_bf16);
  m.impl("swiglu_bf16", &swiglu_bf16);
  m.impl("int4_mm", &int4_mm);
  m.impl("decode_attention", &decode_attention);
  m.impl("paged_decode_attention", &paged_decode_attention);
  m.impl("decode_layers", &decode_layers);
  m.impl("paged_decode_layers", &paged_decode_layers);
}
