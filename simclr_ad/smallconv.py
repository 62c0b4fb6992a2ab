"""Convolutions on small feature maps as plain matrix products (a CPU speed fix).

At 64 px, ResNet18's layer4 sees 2x2 maps. oneDNN runs 3x3 convolutions there far below the
machine's GEMM speed, its weight gradient especially (measured on 2 cores in bf16: 87 GFLOP/s
for 512->512 on 2x2, against ~400 for a large GEMM). ``SmallMapConv2d`` is an ``nn.Conv2d``
(same parameters, same state_dict) that runs such convolutions as one GEMM, in one of two
ways, and leaves every other one to oneDNN:

dense      (3x3 and other kernels, output positions x input positions <= 64: 2x2 -> 2x2 and
           4x4 -> 2x2). On an HxW map a convolution is a linear map from the H*W*C inputs to
           the P*O outputs, i.e. one (P*O) x (H*W*C) matrix assembled from the kernel taps,

               big[p, o, q, c] = sum_t S[t, p, q] * weight[o, c, t],

           where S[t, p, q] = 1 when tap t joins output position p to input position q (zero
           padding has no tap). Fewer FLOPs than the convolution itself on 2x2 maps (4 of the
           9 taps ever touch an input).
pointwise  (1x1 kernels, strided or on <= 4x4 outputs). The (strided) pixels times the weight
           as an O x C matrix: ResNet's downsampling shortcuts become one plain GEMM.

Autograd differentiates through both, so no backward is written by hand. Measured fwd+bwd in
bf16 on 2 cores, one layer at a time (one-off probes, rough): 512->512 3x3 on 2x2, 29 ms vs
83 ms (dense); 1x1 stride 2 8x8 -> 4x4, 256->512, 2.6 vs 5.0 ms; 1x1 2048->512 on 4x4, 35 vs
38 ms. On this machine oneDNN beat an im2col GEMM for 3x3 convolutions on 4x4 maps (29 vs
46 ms for 256->256 at batch 256), so those stay with oneDNN, as do larger maps.
``convert(model)`` swaps the class of every plain ``nn.Conv2d`` in place.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

MAX_POSITION_PAIRS = 64  # dense: output x input positions; 2x2->2x2 is 16, 4x4->2x2 is 64
MAX_POINTWISE_OUTPUTS = 16  # unstrided 1x1: output positions, up to 4x4 (8x8 measured no faster)


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

    def gemm_path(self, x: torch.Tensor) -> str | None:
        """"dense", "pointwise", or None for the ordinary convolution."""
        kh, kw = self.kernel_size
        if (x.device.type != "cpu" or x.dim() != 4 or self.groups != 1 or self.dilation != (1, 1)
                or self.padding_mode != "zeros" or isinstance(self.padding, str)):
            return None
        h, w = x.shape[-2:]
        ho, wo = self._out_size(h, w)
        if ho <= 0 or wo <= 0:
            return None
        if kh * kw == 1 and self.padding == (0, 0):
            return "pointwise" if self.stride != (1, 1) or ho * wo <= MAX_POINTWISE_OUTPUTS else None
        return "dense" if ho * wo * h * w <= MAX_POSITION_PAIRS else None

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path = self.gemm_path(x)
        if path is None:
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        n, c, h, w = x.shape
        o = self.out_channels
        ho, wo = self._out_size(h, w)
        x_nhwc = x.to(dtype).permute(0, 2, 3, 1)  # a view when x is channels_last
        bias = None if self.bias is None else self.bias.to(dtype)
        if path == "dense":  # rows (p, o), columns (q, c)
            taps = tap_matrix(h, w, self.kernel_size, self.stride, self.padding).to(dtype)
            t, p, q = taps.shape
            weight = self.weight.to(dtype=dtype, memory_format=torch.contiguous_format)  # [O, C, kh, kw]
            big = (weight.reshape(o * c, t) @ taps.reshape(t, p * q)).view(o, c, p, q)
            matrix = big.permute(2, 0, 3, 1).reshape(p * o, q * c)
            rows = x_nhwc.reshape(n, q * c)
            bias = None if bias is None else bias.repeat(ho * wo)
        else:  # pointwise: rows (n, p), columns c
            sh, sw = self.stride
            rows = x_nhwc[:, ::sh, ::sw].reshape(n * ho * wo, c)
            matrix = self.weight.to(dtype).reshape(o, c)
        out = F.linear(rows, matrix, bias)
        return out.view(n, ho, wo, o).permute(0, 3, 1, 2)  # NCHW view of channels_last memory


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
