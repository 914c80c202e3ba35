// Shared helpers of loomlm's CPU kernels: float32 conversions, vectorised dot products, exp and
// prefetching. AVX-512 where the compiler targets it (-march=native on a CPU that has it), plain loops
// elsewhere. Header-only: every kernel file inlines them.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// float32, bfloat16 and float16 (the model dtypes); anything else is refused with the op's name.
#define LOOMLM_DISPATCH(TYPE, NAME, ...)                                                   \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)                \
                                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)         \
                                         AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__))

namespace loomlm_cpu {

// Multiply-adds below which a kernel runs on the calling thread alone (see decode_kernel).
constexpr int64_t kParallelWork = 1 << 20;

template <typename T>
inline float f32(T v) {
  return static_cast<float>(v);
}

template <typename T>
inline T cast(float v) {
  return static_cast<T>(v);
}

// Dot product in a fixed order: 16 lanes (partial sums of every 16th element), then the lanes in a
// fixed tree, then the tail. The order never depends on the buffers' addresses (a compiler's vectorised
// reduction peels elements until an aligned address, so the same row rounded differently depending on
// where its buffer happened to be allocated), nor on the batch a row is in.
inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float s = 0;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
  s = _mm512_reduce_add_ps(acc);
#else
  float part[16] = {0};
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) part[j] += a[i + j] * b[i + j];
  for (int width = 8; width >= 1; width /= 2)
    for (int j = 0; j < width; ++j) part[j] += part[j + width];
  s = part[0];
#endif
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

inline float sum_squares(const float* v, int64_t n) { return dot(v, v, n); }

#if defined(__AVX512F__)
// 16 values of the tensor dtype as float32 lanes.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Stores 16 float32 lanes as the tensor dtype, rounding to nearest even (as c10's conversions do).
inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(c10::BFloat16* p, __m512 v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
}
inline void store16(c10::Half* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
}

// exp(x) for 16 lanes: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its degree-6 Taylor polynomial
// (relative error ~1e-7, float32's own), times 2^n by scalef. Inputs below -104 give 0 (-inf too).
inline __m512 exp16(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 in two parts: exact n * hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#endif

// s[l] = exp(s[l] - m) for l < n; returns their sum.
inline float exp_shifted(float* s, int64_t n, float m) {
  int64_t l = 0;
  float sum = 0;
#if defined(__AVX512F__)
  __m512 acc = _mm512_setzero_ps();
  const __m512 mv = _mm512_set1_ps(m);
  for (; l + 16 <= n; l += 16) {
    const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + l), mv));
    _mm512_storeu_ps(s + l, e);
    acc = _mm512_add_ps(acc, e);
  }
  if (l < n) {
    const __mmask16 tail = static_cast<__mmask16>((1u << (n - l)) - 1);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, s + l), mv));
    _mm512_mask_storeu_ps(s + l, tail, e);
    acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(tail, e));
    l = n;
  }
  sum = _mm512_reduce_add_ps(acc);
#endif
  for (; l < n; ++l) {
    s[l] = std::exp(s[l] - m);
    sum += s[l];
  }
  return sum;
}

}  // namespace loomlm_cpu
