// Weight-only int8 and int4 products for x86 CPUs with AVX2 and FMA (llama3.kernels builds this
// file once with the system C++ compiler and loads it as the torch ops llama3_kernels::*).
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
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kRowBlock = 4;    // activation rows per pass over a weight row
constexpr int64_t kOutBlock = 32;   // weight rows per task: their bytes stay in L1/L2 across passes
constexpr int64_t kFlush = 4096;    // int8: a lane adds 4096/32 pairs of at most 2*128*32767: < 2^31

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline __m128i load128(const void* p) { return _mm_loadu_si128(static_cast<const __m128i*>(p)); }
inline __m256i load256(const void* p) {
  return _mm256_loadu_si256(static_cast<const __m256i*>(p));
}

// Activations on int16 grids: x[m, k] ~= q[m, k] * step[m], each 32-element chunk stored
// as its 16 even then its 16 odd elements: the order in which both kernels unpack 32 weights
// (int8: the low and high bytes of 16-bit lanes by two shifts, cheaper than a sign-extending
// shuffle; int4: the low and high nibbles).
struct Int16Rows {
  std::vector<int16_t> q;
  std::vector<float> step;
  Int16Rows(const float* x, int64_t M, int64_t K) : q(M * K), step(M) {
    at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        const float* xr = x + m * K;
        int16_t* qr = q.data() + m * K;
        float amax = 0.f;
        for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(xr[k]));
        const float s = amax > 0.f ? amax / 32767.f : 1.f, inv = 1.f / s;
        step[m] = s;
        for (int64_t k = 0; k < K; ++k) {
          const int64_t at = (k & ~int64_t(31)) + ((k & 1) << 4) + ((k & 31) >> 1);
          qr[at] = static_cast<int16_t>(std::nearbyint(xr[k] * inv));
        }
      }
    });
  }
};

// Runs dot<R>(m, n, out) for every block of up to kRowBlock activation rows m.. and weight row
// n, tasks over blocks of kOutBlock weight rows, and stores out[i] * step[m + i] * row_scale(n).
template <typename Dot, typename RowScale>
void tiled(int64_t M, int64_t N, const Int16Rows& xq, float* y, Dot dot, RowScale row_scale) {
  const int64_t blocks = (N + kOutBlock - 1) / kOutBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    float out[kRowBlock];
    for (int64_t n0 = b0 * kOutBlock; n0 < std::min(N, b1 * kOutBlock); n0 += kOutBlock) {
      const int64_t n1 = std::min(N, n0 + kOutBlock);
      for (int64_t m = 0; m < M; m += kRowBlock) {
        const int64_t r = std::min(kRowBlock, M - m);
        for (int64_t n = n0; n < n1; ++n) {
          switch (r) {
            case 4: dot(std::integral_constant<int, 4>{}, m, n, out); break;
            case 3: dot(std::integral_constant<int, 3>{}, m, n, out); break;
            case 2: dot(std::integral_constant<int, 2>{}, m, n, out); break;
            default: dot(std::integral_constant<int, 1>{}, m, n, out); break;
          }
          const float s = row_scale(n);
          for (int64_t i = 0; i < r; ++i) y[(m + i) * N + n] = out[i] * xq.step[m + i] * s;
        }
      }
    }
  });
}

// ---- int8: w[n, k] = codes[n, k] * scale[n] ----

// R activation rows times one int8 weight row.
template <int R>
inline void int8_dot(const int16_t* x, int64_t K, const int8_t* w, float* out) {
  __m256 f[R];
  for (int r = 0; r < R; ++r) f[r] = _mm256_setzero_ps();
  for (int64_t k0 = 0; k0 < K; k0 += kFlush) {
    const int64_t k1 = std::min(K, k0 + kFlush);
    __m256i a[R][2];
    for (int r = 0; r < R; ++r) a[r][0] = a[r][1] = _mm256_setzero_si256();
    for (int64_t k = k0; k < k1; k += 32) {
      const __m256i b = load256(w + k);
      const __m256i even = _mm256_srai_epi16(_mm256_slli_epi16(b, 8), 8);
      const __m256i odd = _mm256_srai_epi16(b, 8);
      for (int r = 0; r < R; ++r) {
        a[r][0] = _mm256_add_epi32(a[r][0], _mm256_madd_epi16(even, load256(x + r * K + k)));
        a[r][1] = _mm256_add_epi32(a[r][1], _mm256_madd_epi16(odd, load256(x + r * K + k + 16)));
      }
    }
    for (int r = 0; r < R; ++r)
      f[r] = _mm256_add_ps(f[r], _mm256_cvtepi32_ps(_mm256_add_epi32(a[r][0], a[r][1])));
  }
  for (int r = 0; r < R; ++r) out[r] = hsum(f[r]);
}

at::Tensor int8_mm(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& scale) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "int8_mm: x must be a contiguous float32 matrix");
  TORCH_CHECK(codes.dim() == 2 && codes.scalar_type() == at::kChar && codes.is_contiguous(),
              "int8_mm: codes must be a contiguous int8 matrix");
  const int64_t M = x.size(0), K = x.size(1), N = codes.size(0);
  TORCH_CHECK(codes.size(1) == K && K % 32 == 0, "int8_mm: K must match and be a multiple of 32");
  TORCH_CHECK(scale.numel() == N && scale.scalar_type() == at::kFloat && scale.is_contiguous(),
              "int8_mm: one float32 scale per output row");
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const Int16Rows xq(x.data_ptr<float>(), M, K);
  const int8_t* wp = codes.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  tiled(M, N, xq, y.data_ptr<float>(),
        [&](auto R, int64_t m, int64_t n, float* out) {
          int8_dot<decltype(R)::value>(xq.q.data() + m * K, K, wp + n * K, out);
        },
        [&](int64_t n) { return sp[n]; });
  return y;
}

// ---- int4: w[n, k] = code * scale[n, k / group] + zero[n, k / group], two codes a byte ----

template <int R>
inline void int4_dot(const int16_t* x, const float* xsum, int64_t K, const uint8_t* w,
                     const float* scale, const float* zero, int64_t group, float* out) {
  const __m128i low = _mm_set1_epi8(0x0F);
  const int64_t groups = K / group;
  __m256 f[R];
  for (int r = 0; r < R; ++r) f[r] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i a[R];
    for (int r = 0; r < R; ++r) a[r] = _mm256_setzero_si256();
    for (int64_t k = g * group; k < (g + 1) * group; k += 32) {
      const __m128i b = load128(w + k / 2);
      const __m256i even = _mm256_cvtepu8_epi16(_mm_and_si128(b, low));
      const __m256i odd = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(b, 4), low));
      for (int r = 0; r < R; ++r) {
        const int16_t* xr = x + r * K + k;
        a[r] = _mm256_add_epi32(a[r], _mm256_madd_epi16(even, load256(xr)));
        a[r] = _mm256_add_epi32(a[r], _mm256_madd_epi16(odd, load256(xr + 16)));
      }
    }
    const __m256 s = _mm256_set1_ps(scale[g]);
    for (int r = 0; r < R; ++r) f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r]), s, f[r]);
  }
  for (int r = 0; r < R; ++r) {
    float z = 0.f;  // the zeros' share: sum over groups of zero * (sum of the group's x)
    for (int64_t g = 0; g < groups; ++g) z += zero[g] * xsum[r * groups + g];
    out[r] = hsum(f[r]) + z;
  }
}

at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                   const at::Tensor& zero, int64_t group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "int4_mm: x must be a contiguous float32 matrix");
  TORCH_CHECK(packed.dim() == 2 && packed.scalar_type() == at::kByte && packed.is_contiguous(),
              "int4_mm: packed must be a contiguous uint8 matrix");
  const int64_t M = x.size(0), K = x.size(1), N = packed.size(0);
  TORCH_CHECK(packed.size(1) * 2 == K && group % 32 == 0 && K % group == 0,
              "int4_mm: K must match and the group be a multiple of 32 dividing K");
  const int64_t groups = K / group;
  for (const at::Tensor* t : {&scale, &zero})
    TORCH_CHECK(t->numel() == N * groups && t->scalar_type() == at::kFloat && t->is_contiguous(),
                "int4_mm: scale and zero must be contiguous float32 (out, in / group)");
  at::Tensor y = at::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const Int16Rows xq(x.data_ptr<float>(), M, K);
  std::vector<float> xsum(M * groups);  // per row and group: the sum of its int16 activations
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < groups; ++g) {
      int64_t s = 0;
      for (int64_t k = g * group; k < (g + 1) * group; ++k) s += xq.q[m * K + k];
      xsum[m * groups + g] = static_cast<float>(s);
    }
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* zp = zero.data_ptr<float>();
  tiled(M, N, xq, y.data_ptr<float>(),
        [&](auto R, int64_t m, int64_t n, float* out) {
          int4_dot<decltype(R)::value>(xq.q.data() + m * K, xsum.data() + m * groups, K, wp + n * (K / 2),
                      sp + n * groups, zp + n * groups, group, out);
        },
        [](int64_t) { return 1.f; });
  return y;
}

}  // namespace

TORCH_LIBRARY(llama3_kernels, m) {
  m.def("int8_mm(Tensor x, Tensor codes, Tensor scale) -> Tensor");
  m.def("int4_mm(Tensor x, Tensor packed, Tensor scale, Tensor zero, int group) -> Tensor");
}

TORCH_LIBRARY_IMPL(llama3_kernels, CPU, m) {
  m.impl("int8_mm", &int8_mm);
  m.impl("int4_mm", &int4_mm);
}
