// AVX-512 helpers shared by the kernels' sources (llama3.kernels compiles them together).
#pragma once
#include <immintrin.h>

#if defined(__AVX512F__)
// 2^x as 2^n * p(f): n = round(x), f = x - n in [-1/2, 1/2], p the degree-5 Taylor polynomial of
// 2^f (relative error < 3e-6; softmax probabilities and SiLU outputs then round to bfloat16).
// vscalefps takes n below -149 to 0 and above 127 to infinity, so no clamp is needed.
inline __m512 exp2_16(__m512 x) {
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.3333558146e-3f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108665e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650696e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718056e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// 16 bfloat16 values (bits) widened to float32: a 16-bit shift
inline __m512 widen16(const uint16_t* a) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
#endif
