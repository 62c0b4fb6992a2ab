"""Convolutions on tiny feature maps as one matrix product (a CPU speed fix).

At 64 px, ResNet18's layer4 sees 2x2 maps. oneDNN runs a 3x3 convolution there at a
small fraction of the machine's GEMM speed, and its backward pass at less than half of
that: measured on 2 cores in bf16, the four 3x3 convolutions of layer4 took ~35 % of a
whole training step. On an HxW map, a convolution is a linear map from the H*W*C input
values to the P*O output values (P output positions), so it can run as a single GEMM with
a (P*O) x (H*W*C) matrix assembled from the kernel taps:

    big[p, o, q, c] = sum_t S[t, p, q] * weight[o, c, t]

where S[t, p, q] = 1 when kernel tap t connects output position p to input position q
(zero padding simply has no tap). Autograd differentiates through both products, so the
weight gradient comes for free. The matrix grows with P*Q, so this pays only on tiny maps;
larger maps keep the ordinary convolution (measured: 3.9x faster fwd+bwd for 512->512 on 2x2,
2x for the stride-2 4x4->2x2 conv, but 4.5x slower for a 4x4->4x4 conv).

``SmallMapConv2d`` is an ``nn.Conv2d`` with the same parameters and state_dict, which takes
the GEMM path only for inputs where it pays; ``convert(model)`` swaps it in place.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

MAX_POSITION_PAIRS = 64  # output positions x input positions; 2x2->2x2 is 16, 4x4->2x2 is 64


@functools.lru_cache(maxsize=64)
def tap_matrix(h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int]) -> torch.Tensor:
    """S[t, p, q]: 1 where kernel tap t = ky*kw + kx joins output p and input q (float32, CPU)."""

    def one_axis(size: int, k: int, s: int, pad: int) -> torch.Tensor:  # [k, out, in]
        out = (size + 2 * pad - k) // s + 1
        offset = torch.arange(size)[None, :] - (torch.arange(out)[:, None] * s - pad)  # tap index per (out, in)
        return (offset[None] == torch.arange(k)[:, None, None]).float()

    ys = one_axis(h, kernel[0], stride[0], padding[0])
    xs = one_axis(w, kernel[1], stride[1], padding[1])
    s = torch.einsum("aoi,bpj->abopij", ys, xs)  # [kh, kw, ho, wo, h, w]
    kh, kw, ho, wo = s.shape[:4]
    return s.reshape(kh * kw, ho * wo, h * w)


class SmallMapConv2d(torch.nn.Conv2d):
    """``nn.Conv2d`` that runs as one GEMM on maps small enough for that to pay (see module doc)."""

    def uses_gemm(self, x: torch.Tensor) -> bool:
        kh, kw = self.kernel_size
        if (x.device.type != "cpu" or x.dim() != 4 or self.groups != 1 or self.dilation != (1, 1)
                or self.padding_mode != "zeros" or isinstance(self.padding, str) or kh * kw == 1):
            return False
        h, w = x.shape[-2:]
        ho = (h + 2 * self.padding[0] - kh) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - kw) // self.stride[1] + 1
        return ho > 0 and wo > 0 and ho * wo * h * w <= MAX_POSITION_PAIRS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.uses_gemm(x):
            return super().forward(x)
        n, c, h, w = x.shape
        o = self.out_channels
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        taps = tap_matrix(h, w, self.kernel_size, self.stride, self.padding).to(dtype)
        t, p, q = taps.shape
        weight = self.weight.to(dtype=dtype, memory_format=torch.contiguous_format)
        big = (weight.reshape(o * c, t) @ taps.reshape(t, p * q)).view(o, c, p, q)
        big = big.permute(2, 0, 3, 1).reshape(p * o, q * c)  # rows (p, o), columns (q, c)
        bias = None if self.bias is None else self.bias.to(dtype).repeat(p)
        out = F.linear(x.to(dtype).permute(0, 2, 3, 1).reshape(n, q * c), big, bias)
        ho = (h + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        return out.view(n, ho, p // ho, o).permute(0, 3, 1, 2)  # NCHW view of channels_last memory


def convert(model: torch.nn.Module) -> int:
    """Turn every plain ``nn.Conv2d`` of ``model`` into a ``SmallMapConv2d`` in place.

    Parameters, buffers and state_dict keys stay as they are. Returns how many were converted.
    """
    count = 0
    for module in model.modules():
        if type(module) is torch.nn.Conv2d:
            module.__class__ = SmallMapConv2d
            count += 1
    return count
