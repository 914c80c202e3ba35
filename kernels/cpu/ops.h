// The ops of loomlm's CPU kernels, as the Python module and the decode-layer loop call them. Each
// checks its inputs (TORCH_CHECK, naming the op) and follows kernels/reference.py's arithmetic: float32
// inside, one rounding to the tensor's dtype at the end.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace loomlm_cpu {

// x [T, H] (+ residual [T, H]) -> (weight * normalise(x + residual), x + residual).
std::vector<at::Tensor> rms_norm(const at::Tensor& x, const at::Tensor& weight, std::optional<at::Tensor> residual,
                                 double eps);

// x [T, 2I] = [gate | up] -> silu(gate) * up [T, I].
at::Tensor silu_and_mul(const at::Tensor& x);

// In place, rotate-half RoPE: x [T, heads, D] (last dimension contiguous), positions [T] int64, cos/sin
// [P, D/2] float32 tables.
at::Tensor rope_(at::Tensor x, const at::Tensor& positions, const at::Tensor& cos, const at::Tensor& sin);

// Stores this token's K/V at out_slots, then one query per request over its slots (see decode_attention.cpp).
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor k_buf,
                            at::Tensor v_buf, const at::Tensor& out_slots, const at::Tensor& req_to_token,
                            const at::Tensor& req_rows, const at::Tensor& seq_lens, double scale);

}  // namespace loomlm_cpu
