// Every decoder layer of a CPU decode step in one call: the Python loop over 30 layers made ~300 module
// and op calls per token, about a millisecond of interpreter time in a 5-10 ms step at batch 1.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace loomlm_cpu {

// One projection, as the model's linear module of that kind runs it.
struct Linear {
  int64_t kind;                     // 0 dense [out, in], 1 oneDNN packed, 2 int4 groups, 3 int8 rows
  at::Tensor weight;                // the dense, packed, int4-packed or int8 weight
  std::optional<at::Tensor> extra;  // int4: scales_and_zeros; int8: row scales
  std::optional<at::Tensor> bias;
  int64_t group;                    // int4 group size
  at::Tensor operator()(const at::Tensor& x) const;
};

// The layers of one model over one KV pool (the buffers are the pool's, one pair per layer).
class DecodeLayers {
 public:
  DecodeLayers(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps, double scale);
  void add_layer(const at::Tensor& input_norm, const at::Tensor& post_norm, std::vector<Linear> linears,
                 const at::Tensor& k_buffer, const at::Tensor& v_buffer);
  // h [B, hidden] (the embeddings of one new token per request) -> (the last layer's MLP output, the
  // residual stream before it), as the Python loop returns them.
  std::vector<at::Tensor> run(at::Tensor h, const at::Tensor& positions, const at::Tensor& cos,
                              const at::Tensor& sin, const at::Tensor& out_slots, const at::Tensor& req_to_token,
                              const at::Tensor& req_rows, const at::Tensor& seq_lens) const;
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

 private:
  struct Layer {
    at::Tensor input_norm, post_norm;
    Linear qkv, o, gate_up, down;
    at::Tensor k_buffer, v_buffer;
  };
  int64_t heads_, kv_heads_, head_dim_;
  double eps_, scale_;
  std::vector<Layer> layers_;
};

}  // namespace loomlm_cpu
