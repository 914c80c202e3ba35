// The decoder layers of a CPU decode step in one C++ loop (see decode_layers.h). Each step is the same
// op as the Python path's: the fused ops of elementwise.cpp, decode_attention.cpp, and the projections
// by the aten / oneDNN op their module calls, so both paths give the same tokens.
#include "decode_layers.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include "ops.h"

namespace loomlm_cpu {
namespace {

// oneDNN's linear over a packed weight, called through the dispatcher as torch.ops.mkldnn does (the op
// has no C++ function of its own in the public headers).
at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& packed, const std::optional<at::Tensor>& bias) {
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(x);
  stack.emplace_back(packed);
  stack.emplace_back(bias.has_value() ? c10::IValue(*bias) : c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(std::string(""));
  op.callBoxed(&stack);
  return stack.back().toTensor();
}

}  // namespace

at::Tensor Linear::operator()(const at::Tensor& x) const {
  at::Tensor out;
  switch (kind) {
    case 0:
      return at::linear(x, weight, bias);
    case 1:
      return onednn_linear(x, weight, bias);
    case 2:
      out = at::_weight_int4pack_mm_for_cpu(x.contiguous(), weight, group, *extra);
      break;
    case 3:
      out = at::_weight_int8pack_mm(x.contiguous(), weight, *extra);
      break;
    default:
      TORCH_CHECK(false, "decode_layers: unknown linear kind ", kind);
  }
  return bias.has_value() ? out + *bias : out;
}

DecodeLayers::DecodeLayers(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, double scale)
    : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(eps), scale_(scale) {
  TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && head_dim > 0,
              "decode_layers: heads must be a positive multiple of kv_heads");
}

void DecodeLayers::add_layer(const at::Tensor& input_norm, const at::Tensor& post_norm, std::vector<Linear> linears,
                             const at::Tensor& k_buffer, const at::Tensor& v_buffer) {
  TORCH_CHECK(linears.size() == 4, "decode_layers: a layer has four projections (qkv, o, gate_up, down)");
  for (const Linear& l : linears) {
    TORCH_CHECK(l.kind >= 0 && l.kind <= 3, "decode_layers: unknown linear kind ", l.kind);
    TORCH_CHECK(l.kind < 2 || l.extra.has_value(), "decode_layers: a quantized projection needs its scales");
  }
  layers_.push_back(Layer{input_norm, post_norm, linears[0], linears[1], linears[2], linears[3], k_buffer, v_buffer});
}

std::vector<at::Tensor> DecodeLayers::run(at::Tensor h, const at::Tensor& positions, const at::Tensor& cos,
                                          const at::Tensor& sin, const at::Tensor& out_slots,
                                          const at::Tensor& req_to_token, const at::Tensor& req_rows,
                                          const at::Tensor& seq_lens) const {
  TORCH_CHECK(h.dim() == 2, "decode_layers: h must be [tokens, hidden]");
  const int64_t T = h.size(0), H = heads_, KVH = kv_heads_, D = head_dim_;
  std::optional<at::Tensor> residual;
  for (const Layer& layer : layers_) {
    std::vector<at::Tensor> normed = rms_norm(h, layer.input_norm, residual, eps_);
    residual = normed[1];
    const at::Tensor qkv = layer.qkv(normed[0]);  // [T, (H + 2 KVH) D]
    const at::Tensor qk = rope_(qkv.narrow(1, 0, (H + KVH) * D).view({T, H + KVH, D}), positions, cos, sin);
    const at::Tensor v = qkv.narrow(1, (H + KVH) * D, KVH * D).view({T, KVH, D});
    const at::Tensor attn = decode_attention(qk.narrow(1, 0, H), qk.narrow(1, H, KVH), v, layer.k_buffer,
                                             layer.v_buffer, out_slots, req_to_token, req_rows, seq_lens, scale_);
    normed = rms_norm(layer.o(attn.view({T, H * D})), layer.post_norm, residual, eps_);
    residual = normed[1];
    h = layer.down(silu_and_mul(layer.gate_up(normed[0])));
  }
  return {h, residual.has_value() ? *residual : h};
}

}  // namespace loomlm_cpu
