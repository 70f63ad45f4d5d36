// The shapes the batch-1 fused decode kernels (the persistent step, decode_step.cu; the attention
// sublayer, attention_sublayer.cu) are built for: the head dims of the models in use and in the
// tests, and the GQA group rounded up to 2, 4 or 8. Other shapes run kernel per op.
#pragma once
#include <type_traits>

namespace sy::cuda {

/**
 * pick(HD, G) for head_dim 16, 64 or 128 and G the group rounded up to 2, 4 or 8, HD and G passed
 * as std::integral_constant (so `pick` names the kernel template's instantiation); null, of
 * the same pointer type, for any other shape.
 */
template <typename Pick>
auto fused_kernel_for(int head_dim, int group, Pick pick) {
  using Kernel = decltype(pick(std::integral_constant<int, 16>{}, std::integral_constant<int, 2>{}));
  const auto by_group = [group, pick](auto hd) -> Kernel {
    if (group <= 2) return pick(hd, std::integral_constant<int, 2>{});
    if (group <= 4) return pick(hd, std::integral_constant<int, 4>{});
    if (group <= 8) return pick(hd, std::integral_constant<int, 8>{});
    return nullptr;
  };
  switch (head_dim) {
    case 16: return by_group(std::integral_constant<int, 16>{});
    case 64: return by_group(std::integral_constant<int, 64>{});
    case 128: return by_group(std::integral_constant<int, 128>{});
    default: return Kernel{nullptr};
  }
}

}  // namespace sy::cuda
