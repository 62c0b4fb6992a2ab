"""A U-Net whose encoder is our ResNet backbone (segmentation-models-pytorch's ``Unet``).

smp's ResNet encoder is torchvision's ResNet without ``fc``/``avgpool``, so our ``encoder.pt``
(a torchvision-style state_dict with a 1-channel stem and ``fc = Identity``) has exactly its
keys and loads with ``strict=True``. ImageNet weights come only from the local torch cache
(``models.imagenet_state``, RGB stem folded to gray); nothing is ever downloaded.
Install the decoder with ``pip install -e ".[seg]"`` (scripts/setup_env.sh does).
"""
from __future__ import annotations

import torch
from torch import nn

from simclr_ad.models import ModelError, infer_arch, init_state
from simclr_ad.config import SEG_ARCHS


def build_unet(arch: str) -> nn.Module:
    """smp ``Unet`` with a 1-channel ``arch`` encoder and one output channel (logits), randomly initialised."""
    if arch not in SEG_ARCHS:
        raise ModelError(f"segmentation supports the encoders {', '.join(SEG_ARCHS)}, not {arch!r}")
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise ModelError("the segmentation stage needs segmentation-models-pytorch: "
                         "pip install -e \".[seg]\" (scripts/setup_env.sh installs it)") from None
    return smp.Unet(arch, encoder_weights=None, in_channels=1, classes=1)


def load_encoder_state(unet: nn.Module, arch: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a backbone state_dict into ``unet.encoder`` with ``strict=True``; a misfit names what differs."""
    found = infer_arch(state)
    if found is not None and found != arch:
        raise ModelError(f"{source} holds a {found} encoder but the U-Net's is {arch} (--arch {found}?)")
    state = {k.removeprefix("backbone."): v for k, v in state.items()
             if not k.startswith(("head.", "projection_head.", "fc."))}
    try:  # nn.Module's own load: smp's override neither returns the result nor is needed here
        nn.Module.load_state_dict(unet.encoder, state, strict=True)
    except RuntimeError as err:
        raise ModelError(f"{source} does not fit the U-Net's {arch} encoder: {' '.join(str(err).split())[:300]}") \
            from None


def init_encoder(unet: nn.Module, arch: str, init: str, encoder: str | None = None) -> None:
    """random (as built), imagenet (local cache only), simclr (``encoder``), or a state_dict path."""
    found = init_state(arch, init, encoder)
    if found is not None:
        load_encoder_state(unet, arch, *found)
