// RMSNorm with the residual add, SiLU-and-mul and RoPE in place: one call each where eager torch makes
// 5-10 (casts, chunks, cats). Built by kernels/cpu_kernels.py; tests: tests/kernels/test_cpu_kernels.py.
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "ops.h"
#include "simd.h"

namespace loomlm_cpu {
namespace {

template <typename T>
void rms_norm_kernel(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, double eps,
                     at::Tensor& out, at::Tensor* summed) {
  const int64_t rows = x.size(0), H = x.size(1);
  const T* xp = x.data_ptr<T>();
  const T* rp = residual ? residual->data_ptr<T>() : nullptr;
  const T* wp = weight.data_ptr<T>();
  T* op = out.data_ptr<T>();
  T* sp = summed ? summed->data_ptr<T>() : nullptr;
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, rows, std::max<int64_t>(1, kParallelWork / (4 * H)), [&](int64_t begin, int64_t end) {
    std::vector<float> buf(H);
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = xp + r * H;
      if (rp) {
        const T* rr = rp + r * H;
        T* sr = sp + r * H;
        for (int64_t i = 0; i < H; ++i) {
          T s = cast<T>(f32(xr[i]) + f32(rr[i]));  // the residual stream keeps the tensor's dtype
          sr[i] = s;
          buf[i] = f32(s);
        }
      } else {
        for (int64_t i = 0; i < H; ++i) buf[i] = f32(xr[i]);
      }
      const float inv = 1.0f / std::sqrt(sum_squares(buf.data(), H) / static_cast<float>(H) + feps);
      T* orow = op + r * H;
      // reference order: normalise in float32, round to the dtype, then scale by the weight
      for (int64_t i = 0; i < H; ++i) orow[i] = cast<T>(f32(wp[i]) * f32(cast<T>(buf[i] * inv)));
    }
  });
}

}  // namespace

// x [T, H] (+ residual [T, H]) -> (weight * normalise(x + residual), x + residual).
std::vector<at::Tensor> rms_norm(const at::Tensor& x, const at::Tensor& weight, std::optional<at::Tensor> residual,
                                 double eps) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "rms_norm: x must be a contiguous [T, H] tensor");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && weight.numel() == x.size(1), "rms_norm: weight [H]");
  at::Tensor out = at::empty_like(x);
  at::Tensor summed;
  if (residual.has_value()) {
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->is_contiguous() &&
                    residual->scalar_type() == x.scalar_type(),
                "rms_norm: residual must match x");
    summed = at::empty_like(x);
  }
  LOOMLM_DISPATCH(x.scalar_type(), "rms_norm", [&] {
    rms_norm_kernel<scalar_t>(x, residual.has_value() ? &*residual : nullptr, weight.contiguous(), eps, out,
                              residual.has_value() ? &summed : nullptr);
  });
  return {out, residual.has_value() ? summed : x};
}

// x [T, 2I] = [gate | up] -> silu(gate) * up [T, I].
at::Tensor silu_and_mul(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) % 2 == 0, "silu_and_mul: x must be [T, 2I]");
  const int64_t rows = x.size(0), I = x.size(1) / 2;
  at::Tensor out = at::empty({rows, I}, x.options());
  LOOMLM_DISPATCH(x.scalar_type(), "silu_and_mul", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, kParallelWork / (8 * I)), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* g = xp + r * 2 * I;
        const scalar_t* u = g + I;
        scalar_t* o = op + r * I;
        int64_t i = 0;
#if defined(__AVX512F__)
        for (; i + 16 <= I; i += 16) {
          const __m512 gv = load16(g + i);
          const __m512 sig = _mm512_div_ps(gv, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
          store16(o + i, _mm512_mul_ps(sig, load16(u + i)));
        }
#endif
        for (; i < I; ++i) {
          const float gf = f32(g[i]);
          o[i] = cast<scalar_t>(gf / (1.0f + std::exp(-gf)) * f32(u[i]));
        }
      }
    });
  });
  return out;
}

// In place, rotate-half RoPE: x [T, heads, D] (last dimension contiguous, any other strides),
// positions [T] int64, cos/sin [P, D/2] float32 tables.
at::Tensor rope_(at::Tensor x, const at::Tensor& positions, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1, "rope_: x must be [T, heads, D] with contiguous rows");
  TORCH_CHECK(positions.scalar_type() == at::kLong && positions.numel() == x.size(0), "rope_: positions [T] int64");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && cos.is_contiguous() && sin.is_contiguous() &&
                  cos.size(1) * 2 == x.size(2),
              "rope_: cos/sin must be contiguous float32 [P, D/2]");
  const int64_t T = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  const int64_t s0 = x.stride(0), s1 = x.stride(1), P = cos.size(0);
  const int64_t* pos = positions.data_ptr<int64_t>();
  const float* cp = cos.data_ptr<float>();
  const float* sp = sin.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) TORCH_CHECK(pos[t] >= 0 && pos[t] < P, "rope_: position out of the table");
  LOOMLM_DISPATCH(x.scalar_type(), "rope_", [&] {
    scalar_t* xp = x.data_ptr<scalar_t>();
    at::parallel_for(0, T, std::max<int64_t>(1, kParallelWork / (4 * heads * half)), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const float* c = cp + pos[t] * half;
        const float* s = sp + pos[t] * half;
        for (int64_t h = 0; h < heads; ++h) {
          scalar_t* a = xp + t * s0 + h * s1;
          scalar_t* b = a + half;
          for (int64_t i = 0; i < half; ++i) {
            const float af = f32(a[i]), bf = f32(b[i]);
            a[i] = cast<scalar_t>(af * c[i] - bf * s[i]);
            b[i] = cast<scalar_t>(bf * c[i] + af * s[i]);
          }
        }
      }
    });
  });
  return x;
}

}  // namespace loomlm_cpu
