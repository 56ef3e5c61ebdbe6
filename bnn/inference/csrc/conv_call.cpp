// A packed layer's kernel call, prepared once (bnn/inference/modules.py): the weights, the epilogue program and
// the next layer's settings kept, so that each call passes only what changes (the input, its width, the residual,
// the tensors to write into, the code path). After a kernel has evicted Python's objects from the caches, the
// attribute reads and the conversions of binary_conv2d's 30 arguments in a call from Python cost several
// microseconds.
#include "kernels.h"

namespace bnn {

ConvCall::ConvCall(torch::Tensor weight, std::vector<int64_t> geometry, torch::Tensor step_codes,
                   torch::Tensor step_params, bool out_over_residual, c10::optional<torch::Tensor> next_threshold,
                   c10::optional<torch::Tensor> next_direction, std::vector<int64_t> outputs,
                   std::vector<torch::Tensor> sources)
    : weight_(std::move(weight)),
      step_codes_(std::move(step_codes)),
      step_params_(std::move(step_params)),
      out_over_residual_(out_over_residual),
      next_threshold_(std::move(next_threshold)),
      next_direction_(std::move(next_direction)),
      sources_(std::move(sources)) {
  TORCH_CHECK(geometry.size() == geometry_.size(), "ConvCall: geometry is (cin, cout, kh, kw, sh, sw, ph, pw, dh, "
              "dw, groups), not ", geometry.size(), " values");
  TORCH_CHECK(outputs.size() == outputs_.size(), "ConvCall: outputs are (next_groups, next_stride, next_channels, "
              "next_channel_offset, out_channels, out_channel_offset), not ", outputs.size(), " values");
  std::copy(geometry.begin(), geometry.end(), geometry_.begin());
  std::copy(outputs.begin(), outputs.end(), outputs_.begin());
  for (const torch::Tensor& t : sources_) versions_.push_back(static_cast<int64_t>(t._version()));
}

bool ConvCall::stale() const {
  for (size_t i = 0; i < sources_.size(); ++i)
    if (static_cast<int64_t>(sources_[i]._version()) != versions_[i]) return true;
  return false;
}

c10::optional<std::tuple<torch::Tensor, torch::Tensor>> ConvCall::operator()(
    torch::Tensor packed, int64_t in_width, c10::optional<torch::Tensor> residual,
    c10::optional<torch::Tensor> packed_out, c10::optional<torch::Tensor> out_into, int64_t isa) const {
  if (stale()) return c10::nullopt;
  const auto& g = geometry_;
  const auto& o = outputs_;
  return binary_conv2d(packed, in_width, weight_, g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10],
                       step_codes_, step_params_, residual, out_over_residual_ && residual.has_value(),
                       next_threshold_, next_direction_, o[0], o[1], o[2], o[3], packed_out, o[4], o[5], out_into,
                       isa);
}

}  // namespace bnn
