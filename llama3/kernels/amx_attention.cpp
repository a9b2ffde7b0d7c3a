// Causal attention for prompt chunks on AMX tiles (Intel Sapphire Rapids and later), as the op
// llama3_kernels::amx_attention; built with cpu_kernels.cpp into one library (llama3.kernels).
//
// Why: PyTorch's CPU flash attention runs a 512-token bfloat16 prompt of SmolLM2 (9 heads of 64)
// at ~160 GMAC/s on 2 Xeon cores, a fifth of a bfloat16 prefill. Here each block of 32 query rows
// takes its scores against every key it may see in one tile sweep (Q K^T, float32 sums), an exact
// softmax over them in AVX-512 (no running rescale: a block's scores fit in L2 for any prompt
// a CPU serves), and P V in a second sweep; blocks past a query's position are never computed.
// Queries, keys, values and probabilities are bfloat16 (as PyTorch's bfloat16 SDPA); sums, the
// softmax and the output are float32.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <torch/library.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "simd512.h"

namespace {

// A block is 32 query rows (two tiles of rows) against two tiles of keys or of output dims at a
// time: each operand tile loaded serves two products.
constexpr int64_t kRows = 32;
constexpr int64_t kKeyPad = 32;  // keys are computed in sweeps of two tiles of 16

struct Shapes {
  int64_t B, H, KV, Lq, Lk, D, NK;  // NK: Lk rounded up to kKeyPad
};

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && \
    defined(__AVX512BW__)
constexpr bool kBuilt = true;

// Linux hands a process the tiles' register state only on request (arch_prctl, kernel >= 5.16).
bool tiles_permitted() {
  static const bool ok = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                 18 /* XFEATURE_XTILEDATA */) == 0;
  return ok;
}

// All eight tiles are 16 rows of 64 bytes: tmm0-3 float32 sums (16x16), tmm4-5 A operands (16
// rows of 32 bfloat16), tmm6-7 B operands (16 rows of 16 bfloat16 pairs: "VNNI" order).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int t = 0; t < 8; ++t) colsb[t] = 64, rows[t] = 16;
  }
};

// n values of a row (float32 or bfloat16) as bfloat16 bits, rounded to nearest even; n is a
// head_dim, a multiple of 64 (amx_attention checks it)
inline void row_bf16(const at::Tensor& t, const void* src, int64_t n, uint16_t* dst) {
  if (t.scalar_type() == at::kBFloat16) {
    std::memcpy(dst, src, n * 2);
    return;
  }
  const float* f = static_cast<const float*>(src);
  for (int64_t i = 0; i < n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(f + i)));
}

// row n of t's (b, g) matrix as bfloat16, zeros past the last row
inline void key_row(const at::Tensor& t, int64_t b, int64_t g, int64_t n, int64_t D,
                    uint16_t* dst) {
  if (n >= t.size(2)) {
    std::memset(dst, 0, D * 2);
    return;
  }
  const auto* base = static_cast<const char*>(t.data_ptr());
  row_bf16(t, base + (b * t.stride(0) + g * t.stride(1) + n * t.stride(2)) * t.element_size(), D,
           dst);
}

// Keys n0 .. n0 + kKeyPad of kv head (b, g) into its pack kp, in the tiles' B order: per 16
// keys and 32 dims, a tile whose row p holds, for each key, dims 2p and 2p + 1.
void pack_keys(const at::Tensor& k, int64_t b, int64_t g, int64_t n0, int64_t D, uint16_t* kp) {
  const int64_t S = D / 32;
  uint16_t row[256];
  auto* out = reinterpret_cast<uint32_t*>(kp);
  for (int64_t n = n0; n < n0 + kKeyPad; ++n) {
    key_row(k, b, g, n, D, row);
    uint32_t words[128];
    std::memcpy(words, row, D * 2);
    for (int64_t w = 0; w < D / 2; ++w)
      out[(((n / 16) * S + w / 16) * 16 + w % 16) * 16 + n % 16] = words[w];
  }
}

// Values n0 .. n0 + kKeyPad of kv head (b, g) into its pack vp, in the tiles' B order: per 32
// keys and 16 dims, a tile whose row p holds, for each dim, keys 2p and 2p + 1.
void pack_values(const at::Tensor& v, int64_t b, int64_t g, int64_t n0, int64_t D, uint16_t* vp) {
  const int64_t C = D / 16;
  const __m512i interleave = _mm512_set_epi16(
      47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
      39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
  uint16_t row[256], next[256];
  for (int64_t n = n0; n < n0 + kKeyPad; n += 2) {
    key_row(v, b, g, n, D, row);
    key_row(v, b, g, n + 1, D, next);
    for (int64_t c = 0; c < C; ++c) {  // 16 dims of keys n and n + 1, interleaved
      const __m512i x = _mm512_castsi256_si512(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c * 16)));
      const __m512i y = _mm512_castsi256_si512(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(next + c * 16)));
      uint16_t* dst = vp + (((n / 32) * C + c) * 16 + (n % 32) / 2) * 32;
      _mm512_storeu_si512(dst, _mm512_permutex2var_epi16(x, interleave, y));
    }
  }
}

// Query rows i0 .. i0 + kRows of head h (batch b) into out (B, Lq, H, D) float32. Buffers:
// qbuf kRows x D, sbuf kRows x NK (+16) float32, pbuf kRows x NK (+32) bfloat16, obuf kRows x 32.
void attend_block(const at::Tensor& q, const Shapes& s, int64_t b, int64_t h, int64_t i0,
                  const uint16_t* kp, const uint16_t* vp, float scale, uint16_t* qbuf, float* sbuf,
                  uint16_t* pbuf, float* obuf, float* out) {
  const int64_t D = s.D, S = D / 32, C = D / 16;
  // row strides off a multiple of 4 KiB: sixteen rows a tile apart would share few cache sets
  const int64_t ss = s.NK + 16, ps = s.NK + 32;
  const int64_t rows = std::min(kRows, s.Lq - i0);
  const int64_t shift = s.Lk - s.Lq;  // query i sits at position shift + i
  const auto* qb = static_cast<const char*>(q.data_ptr());
  for (int64_t r = 0; r < kRows; ++r) {
    if (r < rows)
      row_bf16(q, qb + (b * q.stride(0) + h * q.stride(1) + (i0 + r) * q.stride(2)) *
                           q.element_size(), D, qbuf + r * D);
    else
      std::memset(qbuf + r * D, 0, D * 2);
  }
  const int64_t seen = std::min(s.Lk, shift + i0 + rows);  // keys the last row sees
  const int64_t nk = (seen + kKeyPad - 1) / kKeyPad * kKeyPad;

  // scores: kRows x nk, 32 keys a sweep
  for (int64_t kb = 0; kb < nk / 16; kb += 2) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t d = 0; d < S; ++d) {
      _tile_loadd(4, qbuf + d * 32, D * 2);
      _tile_loadd(5, qbuf + 16 * D + d * 32, D * 2);
      _tile_loadd(6, kp + (kb * S + d) * 512, 64);
      _tile_loadd(7, kp + ((kb + 1) * S + d) * 512, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, sbuf + kb * 16, ss * 4);
    _tile_stored(1, sbuf + kb * 16 + 16, ss * 4);
    _tile_stored(2, sbuf + 16 * ss + kb * 16, ss * 4);
    _tile_stored(3, sbuf + 16 * ss + kb * 16 + 16, ss * 4);
  }

  // softmax of each row over the keys it sees; probabilities as bfloat16, zero past them
  float inv_sum[kRows];
  const float c = scale * 1.44269504f;  // e^((x - max) * scale) = 2^(x * c - max * c)
  const __m512 cs = _mm512_set1_ps(c);
  for (int64_t r = 0; r < kRows; ++r) {
    uint16_t* p = pbuf + r * ps;
    if (r >= rows) {
      std::memset(p, 0, nk * 2);
      continue;
    }
    const float* srow = sbuf + r * ss;
    const int64_t L = std::min(s.Lk, shift + i0 + r + 1);
    __m512 top = _mm512_set1_ps(-INFINITY);
    int64_t j = 0;
    for (; j + 16 <= L; j += 16) top = _mm512_max_ps(top, _mm512_loadu_ps(srow + j));
    const __mmask16 tail = static_cast<__mmask16>((1u << (L - j)) - 1);
    top = _mm512_mask_max_ps(top, tail, top, _mm512_maskz_loadu_ps(tail, srow + j));
    const __m512 mc = _mm512_set1_ps(_mm512_reduce_max_ps(top) * c);
    __m512 total = _mm512_setzero_ps();
    for (j = 0; j + 16 <= L; j += 16) {
      const __m512 e = exp2_16(_mm512_fmsub_ps(_mm512_loadu_ps(srow + j), cs, mc));
      total = _mm512_add_ps(total, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), (__m256i)_mm512_cvtneps_pbh(e));
    }
    if (j < L) {
      const __m512 e =
          _mm512_maskz_mov_ps(tail, exp2_16(_mm512_fmsub_ps(_mm512_loadu_ps(srow + j), cs, mc)));
      total = _mm512_add_ps(total, e);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), (__m256i)_mm512_cvtneps_pbh(e));
      j += 16;
    }
    for (; j < nk; j += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + j), _mm256_setzero_si256());
    inv_sum[r] = 1.f / _mm512_reduce_add_ps(total);
  }

  // out = P V / sum, 32 output dims a sweep
  for (int64_t c0 = 0; c0 < C; c0 += 2) {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (int64_t kk = 0; kk < nk / 32; ++kk) {
      _tile_loadd(4, pbuf + kk * 32, ps * 2);
      _tile_loadd(5, pbuf + 16 * ps + kk * 32, ps * 2);
      _tile_loadd(6, vp + (kk * C + c0) * 512, 64);
      _tile_loadd(7, vp + (kk * C + c0 + 1) * 512, 64);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 4, 7);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, obuf, 128);
    _tile_stored(1, obuf + 16, 128);
    _tile_stored(2, obuf + 16 * 32, 128);
    _tile_stored(3, obuf + 16 * 32 + 16, 128);
    for (int64_t r = 0; r < rows; ++r) {
      float* dst = out + ((b * s.Lq + i0 + r) * s.H + h) * D + c0 * 16;
      const __m512 f = _mm512_set1_ps(inv_sum[r]);
      _mm512_storeu_ps(dst, _mm512_mul_ps(_mm512_loadu_ps(obuf + r * 32), f));
      _mm512_storeu_ps(dst + 16, _mm512_mul_ps(_mm512_loadu_ps(obuf + r * 32 + 16), f));
    }
  }
}

void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Shapes& s,
         float scale, float* out) {
  const int64_t per_head = s.NK * s.D, chunks = s.NK / kKeyPad;
  const std::unique_ptr<uint16_t[]> kpack(new uint16_t[s.B * s.KV * per_head]),
      vpack(new uint16_t[s.B * s.KV * per_head]);
  const int64_t blocks = (s.Lq + kRows - 1) / kRows, heads = s.B * s.H;
  const int64_t group = s.H / s.KV;
#pragma omp parallel num_threads(at::get_num_threads())
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < 2 * s.B * s.KV * chunks; ++t) {
      const int64_t bg = t / (2 * chunks), n0 = (t % chunks) * kKeyPad;
      if ((t / chunks) % 2 == 0)
        pack_keys(k, bg / s.KV, bg % s.KV, n0, s.D, kpack.get() + bg * per_head);
      else
        pack_values(v, bg / s.KV, bg % s.KV, n0, s.D, vpack.get() + bg * per_head);
    }
    const TileConfig config;
    _tile_loadconfig(&config);
    std::vector<uint16_t> qbuf(kRows * s.D), pbuf(kRows * (s.NK + 32));
    std::vector<float> sbuf(kRows * (s.NK + 16)), obuf(kRows * 32);
    // the costliest blocks (last rows: the most keys) first, so the threads finish together
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < blocks * heads; ++t) {
      const int64_t blk = blocks - 1 - t / heads, bh = t % heads;
      const int64_t b = bh / s.H, h = bh % s.H, bg = b * s.KV + h / group;
      attend_block(q, s, b, h, blk * kRows, kpack.get() + bg * per_head,
                   vpack.get() + bg * per_head, scale, qbuf.data(), sbuf.data(), pbuf.data(),
                   obuf.data(), out);
    }
    _tile_release();
  }
}
#else
constexpr bool kBuilt = false;
bool tiles_permitted() { return false; }
void run(const at::Tensor&, const at::Tensor&, const at::Tensor&, const Shapes&, float, float*) {}
#endif

bool has_amx() { return kBuilt && tiles_permitted(); }

// q (B, H, Lq, D), k and v (B, KV, Lk, D): float32 or bfloat16, each row contiguous; Lk >= Lq,
// query i at position Lk - Lq + i seeing keys 0 .. that position; head h reads kv head
// h / (H / KV). Returns float32 (B, Lq, H, D).
at::Tensor amx_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         double scale) {
  TORCH_CHECK(has_amx(), "amx_attention: this build or this CPU/kernel has no AMX tiles");
  for (const at::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu() && t->dim() == 4 && t->stride(3) == 1 &&
                    (t->scalar_type() == at::kFloat || t->scalar_type() == at::kBFloat16),
                "amx_attention: q, k and v must be 4-d float32/bfloat16 CPU tensors whose rows "
                "are contiguous");
  }
  const Shapes s{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3),
                 (k.size(2) + kKeyPad - 1) / kKeyPad * kKeyPad};
  TORCH_CHECK(s.D % 64 == 0 && s.D <= 256, "amx_attention: head_dim must be 64, 128, 192 or 256");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == s.B && k.size(3) == s.D,
              "amx_attention: k and v must be (B, KV, Lk, head_dim) like q's");
  TORCH_CHECK(s.KV > 0 && s.H % s.KV == 0, "amx_attention: heads must be a multiple of kv heads");
  TORCH_CHECK(s.Lk >= s.Lq, "amx_attention: fewer keys than queries");
  at::Tensor out = at::empty({s.B, s.Lq, s.H, s.D}, q.options().dtype(at::kFloat));
  if (s.Lq > 0) run(q, k, v, s, static_cast<float>(scale), out.data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(llama3_kernels, m) {
  m.def("has_amx", &has_amx);  // no tensor arguments: one kernel for every backend
  m.def("amx_attention(Tensor q, Tensor k, Tensor v, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(llama3_kernels, CPU, m) { m.impl("amx_attention", &amx_attention); }
