// The functions of the bnn kernel extension, one source file each (bindings.cpp exposes them to Python).
#pragma once
#include <torch/extension.h>
#include <array>
#include <cstdint>
#include <vector>

namespace bnn {

// The code paths, best last; best_isa() is the best this CPU runs.
enum class Isa : int64_t { portable = 0, avx2 = 1, avx512 = 2 };
Isa best_isa();
// min(requested, best_isa()): a caller may cap the code path (tests compare them), never raise it.
Isa capped_isa(int64_t requested);

// binary_conv.cpp
// The bytes of a packed input's words for a layer of `channels_per_group` input channels per group on code path
// `isa` (capped): 4 (int32 words) where the AVX-512 or AVX2 half-word path runs it (at most 32 channels), else 8
// (int64).
int64_t packed_word_bytes(int64_t channels_per_group, int64_t isa);
torch::Tensor pack_input(torch::Tensor x, torch::Tensor threshold, torch::Tensor direction, int64_t groups,
                         int64_t stride_w, int64_t isa);
// -> (output, the next layer's packed input: when next_stride > 0, into packed_out if given, else a new tensor;
// undefined otherwise). The output channels are the next layer's input channels next_channel_offset ... of its
// next_channels (more than cout when other layers, whose outputs the network concatenates, write the others).
// Likewise the output: [N, out_channels, Ho, Wo], this layer's channels from out_channel_offset, into out_into when
// given (another layer's channels already there), else a new tensor.
std::tuple<torch::Tensor, torch::Tensor> binary_conv2d(
    torch::Tensor packed, int64_t in_width, torch::Tensor weight, int64_t cin, int64_t cout, int64_t kh, int64_t kw,
    int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t groups, torch::Tensor step_codes,
    torch::Tensor step_params, c10::optional<torch::Tensor> residual, bool out_over_residual,
    c10::optional<torch::Tensor> next_threshold, c10::optional<torch::Tensor> next_direction, int64_t next_groups,
    int64_t next_stride, int64_t next_channels, int64_t next_channel_offset, c10::optional<torch::Tensor> packed_out,
    int64_t out_channels, int64_t out_channel_offset, c10::optional<torch::Tensor> out_into, int64_t isa);

// conv_call.cpp: binary_conv2d with a layer's fixed arguments kept. geometry: (cin, cout, kh, kw, sh, sw, ph, pw,
// dh, dw, groups); outputs: (next_groups, next_stride, next_channels, next_channel_offset, out_channels,
// out_channel_offset); sources: the tensors the weight and the epilogue program were made from. A call returns
// nothing, and runs nothing, once a source has changed in place (its version counter moved): the caller then
// prepares a new ConvCall. The output goes over the residual when out_over_residual and a residual is given.
class ConvCall {
 public:
  ConvCall(torch::Tensor weight, std::vector<int64_t> geometry, torch::Tensor step_codes, torch::Tensor step_params,
           bool out_over_residual, c10::optional<torch::Tensor> next_threshold,
           c10::optional<torch::Tensor> next_direction, std::vector<int64_t> outputs,
           std::vector<torch::Tensor> sources);
  bool stale() const;
  c10::optional<std::tuple<torch::Tensor, torch::Tensor>> operator()(
      torch::Tensor packed, int64_t in_width, c10::optional<torch::Tensor> residual,
      c10::optional<torch::Tensor> packed_out, c10::optional<torch::Tensor> out_into, int64_t isa) const;

 private:
  torch::Tensor weight_, step_codes_, step_params_;
  std::array<int64_t, 11> geometry_{};
  bool out_over_residual_;
  c10::optional<torch::Tensor> next_threshold_, next_direction_;
  std::array<int64_t, 6> outputs_{};
  std::vector<torch::Tensor> sources_;
  std::vector<int64_t> versions_;
};

// pooling.cpp: float32 NCHW pooling, bit-identical to F.max_pool2d / F.avg_pool2d (ATen's NCHW CPU kernels)
torch::Tensor max_pool2d_nchw(torch::Tensor x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                              int64_t pw, int64_t dh, int64_t dw, bool ceil_mode, int64_t isa);
torch::Tensor avg_pool2d_nchw(torch::Tensor x, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                              int64_t pw, bool ceil_mode, bool count_include_pad,
                              c10::optional<int64_t> divisor_override, int64_t isa);

}  // namespace bnn
