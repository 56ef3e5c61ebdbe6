// Python bindings of the bnn kernel extension (built by bnn/inference/kernels.py).
#include "kernels.h"

namespace bnn {

Isa best_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq") &&
      __builtin_cpu_supports("avx512bw"))
    return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return Isa::avx2;
  return Isa::portable;
}

Isa capped_isa(int64_t requested) {
  return static_cast<Isa>(std::min<int64_t>(requested, static_cast<int64_t>(best_isa())));
}

}  // namespace bnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("cpu_isa", [] { return static_cast<int64_t>(bnn::best_isa()); },
        "best code path on this CPU: 0 portable, 1 AVX2, 2 AVX-512 VPOPCNTDQ");
  m.def("packed_word_bytes", &bnn::packed_word_bytes,
        "bytes of a packed input's words for that many channels per group on that code path: 4 (int32) or 8 (int64)");
  m.def("pack_input", &bnn::pack_input, "threshold and pack a float NCHW tensor into [G,WG,N,H,SW,WP] words");
  m.def("binary_conv2d", &bnn::binary_conv2d, "packed binary conv2d with a fused epilogue (and the next binary layer's packed input)");
  // (module_local: builds of other sources, under other names, can be loaded in the same process)
  pybind11::class_<bnn::ConvCall>(m, "ConvCall", pybind11::module_local(),
                                  "binary_conv2d with a layer's fixed arguments kept (kernels.h)")
      .def(pybind11::init<torch::Tensor, std::vector<int64_t>, torch::Tensor, torch::Tensor, bool,
                          c10::optional<torch::Tensor>, c10::optional<torch::Tensor>, std::vector<int64_t>,
                          std::vector<torch::Tensor>>())
      .def("__call__", &bnn::ConvCall::operator(), "(packed, in_width, residual, packed_out, out_into, isa) -> "
           "(output, next layer's packed input), as binary_conv2d; None, running nothing, when stale");
  m.def("max_pool2d_nchw", &bnn::max_pool2d_nchw, "F.max_pool2d of a float32 NCHW tensor, bit-identical");
  m.def("avg_pool2d_nchw", &bnn::avg_pool2d_nchw, "F.avg_pool2d of a float32 NCHW tensor, bit-identical");
}
