"""Backbones with a one-channel stem, SimCLR and classifier wrappers, initialisations.

The backbone is the torchvision model of an arch with a 1-channel first convolution
and its classification layer replaced by ``Identity``. ``encoder.pt`` is exactly its
state_dict, so it loads with ``strict=True`` into ``build_backbone(arch)``.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from lightly.models.modules import SimCLRProjectionHead
from torch import nn

from simclr_ad import checkpoint
from simclr_ad.config import CAM_LAYERS
from simclr_ad.errors import UserError

_IMAGENET_WEIGHTS = {
    "resnet18": "ResNet18_Weights",
    "resnet50": "ResNet50_Weights",
    "densenet121": "DenseNet121_Weights",
    "mobilenet_v2": "MobileNet_V2_Weights",
}


class ModelError(UserError):
    pass


def _first_conv_path(arch: str) -> tuple[str, ...]:
    return {"resnet18": ("conv1",), "resnet50": ("conv1",), "densenet121": ("features", "conv0"),
            "mobilenet_v2": ("features", "0", "0")}[arch]


def _get(module: nn.Module, path: tuple[str, ...]) -> nn.Module:
    for name in path:
        module = getattr(module, name) if not name.isdigit() else module[int(name)]
    return module


def _set(module: nn.Module, path: tuple[str, ...], value: nn.Module) -> None:
    parent = _get(module, path[:-1]) if len(path) > 1 else module
    if path[-1].isdigit():
        parent[int(path[-1])] = value
    else:
        setattr(parent, path[-1], value)


def build_backbone(arch: str) -> tuple[nn.Module, int]:
    """Torchvision ``arch`` with a 1-channel stem and no classifier; returns (model, feature_dim)."""
    if arch not in _IMAGENET_WEIGHTS:
        raise ModelError(f"unknown arch {arch!r}; choose one of {', '.join(_IMAGENET_WEIGHTS)}")
    model = getattr(torchvision.models, arch)(weights=None)
    conv: nn.Conv2d = _get(model, _first_conv_path(arch))
    _set(model, _first_conv_path(arch), nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride,
                                                   conv.padding, bias=conv.bias is not None))
    if arch.startswith("resnet"):
        dim = model.fc.in_features
        model.fc = nn.Identity()
    elif arch == "densenet121":
        dim = model.classifier.in_features
        model.classifier = nn.Identity()
    else:
        dim = model.classifier[-1].in_features
        model.classifier = nn.Identity()
    return model, dim


def infer_arch(state: dict[str, torch.Tensor]) -> str | None:
    """Which of our archs a backbone state_dict belongs to (None if none)."""
    keys = {k.removeprefix("backbone.") for k in state}
    if any(k.startswith("features.denseblock") for k in keys):
        return "densenet121"
    if "features.18.0.weight" in keys:
        return "mobilenet_v2"
    if "layer1.0.conv3.weight" in keys:
        return "resnet50"
    if "layer1.0.conv1.weight" in keys:
        return "resnet18"
    return None


def target_layer(backbone: nn.Module, arch: str, layer: str = "auto") -> nn.Module:
    """The Grad-CAM layer: ``auto`` is one stage before the last, so 128 px input gives an 8x8 map, not 4x4.

    ``layer`` names another ResNet stage (``CAM_LAYERS``), e.g. layer2 for an 8x8 map at 64 px.
    """
    if layer != "auto":
        if not arch.startswith("resnet") or layer not in CAM_LAYERS:
            raise ValueError(f"Grad-CAM layer {layer!r} needs a ResNet and one of {', '.join(CAM_LAYERS)}; "
                             f"{arch} takes auto")
        return getattr(backbone, layer)
    if arch.startswith("resnet"):
        return backbone.layer3
    if arch == "densenet121":
        return backbone.features.denseblock3
    return backbone.features[13]  # mobilenet_v2: last block at stride 16


class SimCLRModel(nn.Module):
    """Backbone + lightly projection head; ``forward`` returns projections z."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int = 2048, out_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(1))


class Classifier(nn.Module):
    """Backbone + dropout + linear head. Keys: ``backbone.*`` and ``head.*``."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_classes: int, dropout: float = 0.5):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).flatten(1))


def imagenet_cache_file(arch: str) -> Path:
    """Where torchvision keeps the ImageNet weights of ``arch`` once downloaded."""
    weights = getattr(torchvision.models, _IMAGENET_WEIGHTS[arch]).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights from the local torch cache, with the RGB stem folded to one channel.

    Never downloads: offline and uncached this is one clear error naming the file.
    """
    path = imagenet_cache_file(arch)
    if not path.is_file():
        raise ModelError(f"ImageNet weights for {arch} are not cached at {path}; this toolkit never "
                         "downloads at run time: copy the file there (see README) or use --init random")
    state = checkpoint.state_dict_of(checkpoint.load(path))
    stem = ".".join(_first_conv_path(arch)) + ".weight"
    # Grayscale g feeds all three RGB inputs equally, so summing the filters keeps the response.
    state[stem] = state[stem].sum(dim=1, keepdim=True)
    for head in ("fc.weight", "fc.bias", "classifier.weight", "classifier.bias",
                 "classifier.1.weight", "classifier.1.bias"):
        state.pop(head, None)
    return state


def load_backbone_state(backbone: nn.Module, arch: str, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` strictly into ``backbone``; an arch mismatch names both archs."""
    found = infer_arch(state)
    if found is not None and found != arch:
        raise ModelError(f"{source} holds a {found} encoder but the model is {arch} (--arch {found}?)")
    state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith(("head.", "projection_head."))}
    stem = ".".join(_first_conv_path(arch)) + ".weight"
    if stem in state and state[stem].ndim == 4 and state[stem].shape[1] == 3:
        raise ModelError(f"{source} holds 3-channel (RGB) weights, e.g. torchvision's ImageNet {arch}; this "
                         "toolkit's models take one grayscale channel: use --init imagenet for ImageNet weights "
                         "(it folds the RGB stem to grayscale), or an encoder.pt of a pretrain run")
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that differ (another width or head)
        raise ModelError(f"{source} does not fit a {arch} backbone: "
                         f"{' '.join(str(err).split())[:240]}") from None
    if missing or unexpected:
        raise ModelError(f"{source} does not fit a {arch} backbone: {len(missing)} missing key(s) "
                         f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})")


def init_state(arch: str, init: str, encoder: str | None = None) -> tuple[dict[str, torch.Tensor], str] | None:
    """The weights an init names and where they came from: None for random, else (state_dict, source)."""
    if init == "random":
        return None
    if init == "imagenet":
        return imagenet_state(arch), f"ImageNet weights for {arch}"
    path = encoder if init == "simclr" else init
    if not path:
        raise ModelError("--init simclr needs --encoder RUN_DIR/encoder.pt from a pretrain run")
    return checkpoint.state_dict_of(checkpoint.load(path)), str(path)


def init_backbone(backbone: nn.Module, arch: str, init: str, encoder: str | None = None) -> None:
    """Apply an init: random (as built), imagenet (local cache), simclr (``encoder``), or a path."""
    found = init_state(arch, init, encoder)
    if found is not None:
        load_backbone_state(backbone, arch, *found)


def build_classifier(arch: str, num_classes: int, dropout: float = 0.5) -> Classifier:
    backbone, dim = build_backbone(arch)
    return Classifier(backbone, dim, num_classes, dropout)
