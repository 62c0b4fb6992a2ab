import pytest
import torch
import torch.nn.functional as F

from simclr_ad import runtime, smallconv
from simclr_ad.config import PretrainConfig
from simclr_ad.models import build_backbone
from simclr_ad.smallconv import SmallMapConv2d, tap_matrix


def test_tap_matrix_by_hand():
    # 2x2 map, 3x3 kernel, stride 1, padding 1: output (0,0) sees input (0,0) through the
    # centre tap 4, (0,1) through tap 5, (1,0) through tap 7 and (1,1) through tap 8.
    s = tap_matrix(2, 2, (3, 3), (1, 1), (1, 1))
    assert s.shape == (9, 4, 4)
    assert s.sum().item() == 16  # every output sees every input exactly once
    assert [int(s[:, 0, q].argmax()) for q in range(4)] == [4, 5, 7, 8]
    assert [int(s[:, 3, q].argmax()) for q in range(4)] == [0, 1, 3, 4]
    # 4x4 -> 2x2 with stride 2: output (0,0) is centred on input (0,0), so it sees a 2x2 corner.
    s = tap_matrix(4, 4, (3, 3), (2, 2), (1, 1))
    assert s.shape == (9, 4, 16)
    assert s[:, 0].sum().item() == 4 and s[:, 3].sum().item() == 9


def _conv(cin, cout, stride, bias, kernel=3):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias)
    return conv, smallconv.convert(torch.nn.Sequential(conv))


@pytest.mark.parametrize("h,w,stride,bias,kernel,path", [
    (2, 2, 1, False, 3, "dense"), (4, 4, 2, True, 3, "dense"), (1, 1, 1, True, 3, "dense"),
    (2, 3, 1, True, 3, "dense"), (4, 4, 1, True, 1, "pointwise"), (3, 5, 1, False, 1, "pointwise"),
    (9, 7, 2, False, 1, "pointwise"), (32, 32, 2, True, 1, "pointwise")])
def test_gemm_paths_equal_conv2d_with_gradients(h, w, stride, bias, kernel, path):
    conv, count = _conv(5, 7, stride, bias, kernel)
    assert count == 1 and isinstance(conv, SmallMapConv2d)
    x = torch.randn(3, 5, h, w, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    conv = conv.double()
    assert conv.gemm_path(x) == path
    x.requires_grad_(True)
    out = conv(x)
    expected = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=kernel // 2)
    torch.testing.assert_close(out, expected)
    grads = torch.autograd.grad(out.square().sum(), [x, conv.weight])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, conv.weight])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_larger_maps_and_1x1_keep_the_ordinary_convolution():
    conv, _ = _conv(4, 4, 1, False)
    assert conv.gemm_path(torch.zeros(1, 4, 4, 4)) is None  # 3x3 on 4x4: oneDNN is faster
    assert conv.gemm_path(torch.zeros(1, 4, 8, 8)) is None
    pointwise = torch.nn.Conv2d(4, 4, 1)
    smallconv.convert(torch.nn.Sequential(pointwise))
    assert pointwise.gemm_path(torch.zeros(1, 4, 8, 8)) is None  # stride 1 on 8x8: oneDNN does fine
    assert pointwise.gemm_path(torch.zeros(1, 4, 8, 8, device="meta")) is None  # only on the CPU


def test_resnet18_at_64px_in_bf16_matches_and_keeps_its_state_dict():
    torch.manual_seed(0)
    plain, _ = build_backbone("resnet18")
    fast, _ = build_backbone("resnet18")
    fast.load_state_dict(plain.state_dict())
    rt = runtime.setup(PretrainConfig(arch="resnet18", precision="bf16", num_threads=0))
    assert rt.small_map_gemm
    fast = rt.prepare_model(fast)
    plain = plain.to(memory_format=torch.channels_last)
    assert sum(isinstance(m, SmallMapConv2d) for m in fast.modules()) == 20
    assert list(fast.state_dict()) == list(plain.state_dict())
    x = torch.randn(8, 1, 64, 64).contiguous(memory_format=torch.channels_last)
    with rt.autocast():
        a, b = plain(x).float(), fast(x).float()
    assert (a - b).abs().max() <= 0.05 * a.abs().max()  # bf16 rounding, not a different function
