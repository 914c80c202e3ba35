// Decode attention over the token-slot KV pool: one query token per request, its keys read straight
// from the pool through req_to_token (no gather copy), float32 scores, softmax and sums, split-KV chunks
// of a fixed number of keys. Built by kernels/cpu_kernels.py.
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

#include "ops.h"
#include "simd.h"

namespace loomlm_cpu {
namespace {

// Keys per work unit. Fixed, so how a row's keys are split (and its sums rounded) depends on its own
// length only, never on the batch or the thread count: a speculative verify row then computes exactly
// what the decode step at its position computes.
constexpr int64_t kKeyBlock = 256;

// Keys ahead of the one being scored whose K and V rows are prefetched (cold rows come from DRAM:
// the weights streamed through the caches since the previous layer read them).
constexpr int64_t kPrefetchAhead = 16;

inline void prefetch_row(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
}

// out[d] = sum_l p[l] * rows[l][d] for d < D (rows in T, p and out float32). The accumulators stay in
// registers across all rows (two per column block, so consecutive multiply-adds do not wait on each
// other); accumulating row by row into memory chained every key through a store and a reload.
template <typename T>
void weighted_sum(const T* const* rows, const float* p, int64_t L, int64_t offset, int64_t D, float* out) {
  int64_t d = 0;
#if defined(__AVX512F__)
  for (; d + 16 <= D; d += 16) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int64_t l = 0;
    for (; l + 2 <= L; l += 2) {
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[l]), load16(rows[l] + offset + d), a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(p[l + 1]), load16(rows[l + 1] + offset + d), a1);
    }
    if (l < L) a0 = _mm512_fmadd_ps(_mm512_set1_ps(p[l]), load16(rows[l] + offset + d), a0);
    _mm512_storeu_ps(out + d, _mm512_add_ps(a0, a1));
  }
#endif
  for (; d < D; ++d) {
    float acc = 0;
    for (int64_t l = 0; l < L; ++l) acc += p[l] * f32(rows[l][offset + d]);
    out[d] = acc;
  }
}

// One query token per request over its cached keys, after storing the new keys and values.
// q [B, H, D], k/v [B, KVH, D] (last dimension contiguous); k_buf/v_buf [S, KVH, D] contiguous;
// out_slots [B] int64 (where this token's K/V go); req_to_token [R, max_len] int32; req_rows [B] int64;
// seq_lens [B] int64 (keys per request, this token included). Query head h reads KV head h / (H / KVH).
// Scores, softmax and sums in float32; returns [B, H, D] in q's dtype.
//
// Work units are (request, KV head, block of kKeyBlock keys): split-KV, as flash decoding does, so a
// batch of one long request still keeps every thread busy. Each block leaves its maximum, sum and
// unnormalised output per query head; the merge rescales them to the common maximum, block by block in
// order.
template <typename T>
void decode_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor& k_buf,
                   at::Tensor& v_buf, const at::Tensor& out_slots, const at::Tensor& req_to_token,
                   const at::Tensor& req_rows, const at::Tensor& seq_lens, double scale, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KVH = k_buf.size(1), G = H / KVH;
  const int64_t max_len = req_to_token.size(1);
  const int64_t* slots = out_slots.data_ptr<int64_t>();
  const int32_t* table = req_to_token.data_ptr<int32_t>();
  const int64_t* rows = req_rows.data_ptr<int64_t>();
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  T* kb = k_buf.data_ptr<T>();
  T* vb = v_buf.data_ptr<T>();
  const T* kp = k.data_ptr<T>();
  const T* vp = v.data_ptr<T>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), vs0 = v.stride(0), vs1 = v.stride(1);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < KVH; ++g) {
      std::copy_n(kp + b * ks0 + g * ks1, D, kb + (slots[b] * KVH + g) * D);
      std::copy_n(vp + b * vs0 + g * vs1, D, vb + (slots[b] * KVH + g) * D);
    }
  const T* qp = q.data_ptr<T>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1);
  T* op = out.data_ptr<T>();
  const float fscale = static_cast<float>(scale);

  int64_t longest = 1;
  for (int64_t b = 0; b < B; ++b) longest = std::max(longest, lens[b]);
  const int64_t pairs = B * KVH, chunks = (longest + kKeyBlock - 1) / kKeyBlock;
  const int64_t units = pairs * chunks;
  // Per unit and query head: running maximum, sum of exponentials, unnormalised output [D].
  std::vector<float> part_max(units * G), part_sum(units * G), part_out(units * G * D);
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> qf(G * D), row(D), scores;
    std::vector<const T*> keys, values;
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t pair = unit / chunks, c = unit % chunks, b = pair / KVH, g = pair % KVH;
      const int64_t lo = std::min(lens[b], c * kKeyBlock), hi = std::min(lens[b], lo + kKeyBlock), L = hi - lo;
      if (L == 0) {
        for (int64_t j = 0; j < G; ++j) {
          part_max[unit * G + j] = -std::numeric_limits<float>::infinity();
          part_sum[unit * G + j] = 0;
          std::fill_n(part_out.data() + (unit * G + j) * D, D, 0.0f);
        }
        continue;
      }
      const int32_t* slot_row = table + rows[b] * max_len + lo;
      keys.resize(L);
      values.resize(L);
      for (int64_t l = 0; l < L; ++l) {
        keys[l] = kb + static_cast<int64_t>(slot_row[l]) * KVH * D;
        values[l] = vb + static_cast<int64_t>(slot_row[l]) * KVH * D;
      }
      for (int64_t j = 0; j < G; ++j)
        for (int64_t d = 0; d < D; ++d) qf[j * D + d] = f32(qp[b * qs0 + (g * G + j) * qs1 + d]) * fscale;
      scores.resize(G * L);
      for (int64_t l = 0; l < L; ++l) {
        if (l + kPrefetchAhead < L) {  // rows come through the slot table: the hardware cannot guess them
          prefetch_row(keys[l + kPrefetchAhead] + g * D, D * sizeof(T));
          prefetch_row(values[l + kPrefetchAhead] + g * D, D * sizeof(T));
        }
        const T* key = keys[l] + g * D;
        for (int64_t d = 0; d < D; ++d) row[d] = f32(key[d]);
        for (int64_t j = 0; j < G; ++j) scores[j * L + l] = dot(qf.data() + j * D, row.data(), D);
      }
      for (int64_t j = 0; j < G; ++j) {
        float* s = scores.data() + j * L;
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t l = 0; l < L; ++l) m = std::max(m, s[l]);
        part_max[unit * G + j] = m;
        part_sum[unit * G + j] = exp_shifted(s, L, m);
        weighted_sum(values.data(), s, L, g * D, D, part_out.data() + (unit * G + j) * D);
      }
    }
  });
  for (int64_t pair = 0; pair < pairs; ++pair) {
    const int64_t b = pair / KVH, g = pair % KVH;
    for (int64_t j = 0; j < G; ++j) {
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t c = 0; c < chunks; ++c) m = std::max(m, part_max[(pair * chunks + c) * G + j]);
      float den = 0;
      std::vector<float> acc(D, 0.0f);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t at = (pair * chunks + c) * G + j;
        if (part_sum[at] == 0) continue;  // an empty chunk
        const float w = std::exp(part_max[at] - m);
        den += part_sum[at] * w;
        for (int64_t d = 0; d < D; ++d) acc[d] += part_out[at * D + d] * w;
      }
      T* o = op + (b * H + g * G + j) * D;
      const float inv = 1.0f / den;
      for (int64_t d = 0; d < D; ++d) o[d] = cast<T>(acc[d] * inv);
    }
  }
}

}  // namespace

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor k_buf,
                            at::Tensor v_buf, const at::Tensor& out_slots, const at::Tensor& req_to_token,
                            const at::Tensor& req_rows, const at::Tensor& seq_lens, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "decode_attention: q, k, v must be 3-d");
  TORCH_CHECK(q.stride(2) == 1 && k.stride(2) == 1 && v.stride(2) == 1, "decode_attention: rows must be contiguous");
  TORCH_CHECK(k_buf.is_contiguous() && v_buf.is_contiguous(), "decode_attention: KV buffers must be contiguous");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type() &&
                  k_buf.scalar_type() == q.scalar_type() && v_buf.scalar_type() == q.scalar_type(),
              "decode_attention: q, k, v and the KV buffers must share a dtype");
  TORCH_CHECK(q.size(1) % k_buf.size(1) == 0 && k.size(1) == k_buf.size(1) && q.size(2) == k_buf.size(2),
              "decode_attention: head counts or head size do not match the KV buffers");
  TORCH_CHECK(req_to_token.scalar_type() == at::kInt && req_to_token.is_contiguous(), "decode_attention: int32 table");
  TORCH_CHECK(out_slots.scalar_type() == at::kLong && req_rows.scalar_type() == at::kLong &&
                  seq_lens.scalar_type() == at::kLong,
              "decode_attention: slots, rows and lengths must be int64");
  const int64_t B = q.size(0);
  TORCH_CHECK(out_slots.numel() == B && req_rows.numel() == B && seq_lens.numel() == B,
              "decode_attention: one slot, row and length per request");
  const int64_t* lens = seq_lens.data_ptr<int64_t>();
  const int64_t* slots = out_slots.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(lens[b] >= 1 && lens[b] <= req_to_token.size(1), "decode_attention: sequence length out of range");
    TORCH_CHECK(slots[b] >= 0 && slots[b] < k_buf.size(0), "decode_attention: slot out of range");
  }
  at::Tensor out = at::empty({B, q.size(1), q.size(2)}, q.options());
  LOOMLM_DISPATCH(q.scalar_type(), "decode_attention", [&] {
    decode_kernel<scalar_t>(q, k, v, k_buf, v_buf, out_slots, req_to_token, req_rows, seq_lens, scale, out);
  });
  return out;
}


}  // namespace loomlm_cpu
