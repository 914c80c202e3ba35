// The Python module of loomlm's CPU kernels (kernels/cpu_kernels.py builds and loads it).
#include <torch/extension.h>

#include "decode_layers.h"
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("rms_norm", &loomlm_cpu::rms_norm, "RMSNorm with the residual add fused");
  m.def("silu_and_mul", &loomlm_cpu::silu_and_mul, "silu(gate) * up");
  m.def("rope_", &loomlm_cpu::rope_, "rotate-half RoPE in place");
  m.def("decode_attention", &loomlm_cpu::decode_attention, "store K/V, then decode attention over the slot pool");
  pybind11::class_<loomlm_cpu::DecodeLayers>(m, "DecodeLayers")
      .def(pybind11::init<int64_t, int64_t, int64_t, double, double>(), pybind11::arg("heads"),
           pybind11::arg("kv_heads"), pybind11::arg("head_dim"), pybind11::arg("eps"), pybind11::arg("scale"))
      .def(
          "add_layer",
          [](loomlm_cpu::DecodeLayers& self, const at::Tensor& input_norm, const at::Tensor& post_norm,
             const std::vector<std::tuple<int64_t, at::Tensor, std::optional<at::Tensor>, std::optional<at::Tensor>,
                                          int64_t>>& linears,
             const at::Tensor& k_buffer, const at::Tensor& v_buffer) {
            std::vector<loomlm_cpu::Linear> parsed;
            for (const auto& [kind, weight, extra, bias, group] : linears)
              parsed.push_back(loomlm_cpu::Linear{kind, weight, extra, bias, group});
            self.add_layer(input_norm, post_norm, std::move(parsed), k_buffer, v_buffer);
          },
          "input_norm, post_norm, [(kind, weight, extra, bias, group)] x 4 (qkv, o, gate_up, down), k/v buffer")
      .def("run", &loomlm_cpu::DecodeLayers::run, "every layer of a decode step: (MLP output, residual)")
      .def_property_readonly("num_layers", &loomlm_cpu::DecodeLayers::num_layers);
}
