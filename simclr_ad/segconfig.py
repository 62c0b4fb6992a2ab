"""The segmentation stage's typed config (``segment:`` sections of configs/*.yaml).

Registered in ``config.STAGES`` so a YAML file's ``segment:`` section is validated like the others.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from simclr_ad.config import AugmentConfig, CommonConfig, _check, _is_path_like

SEG_ARCHS = ("resnet18", "resnet50")  # encoders whose encoder.pt loads strictly into smp's Unet


@dataclass(frozen=True)
class SegmentConfig(AugmentConfig, CommonConfig):
    """U-Net segmentation with our backbone as encoder. Defaults: AdamW 1e-3, Dice + BCE, 30 epochs."""

    arch: str = "resnet18"
    init: str = "simclr"  # simclr (encoder.pt) | random | imagenet (local torch cache only) | PATH
    encoder: Optional[str] = None  # encoder.pt of a pretrain run, for init=simclr
    mask_frac: float = 1.0  # share of the training split's patients whose masks are used (nested, by split seed)
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    bce_weight: float = 1.0  # loss = bce_weight * BCE + dice_weight * (1 - soft Dice over the batch)
    dice_weight: float = 1.0
    threshold: float = 0.5  # foreground where the sigmoid is at least this
    early_stop_patience: int = 8  # epochs without a gain in validation patient Dice; 0 disables
    min_steps_per_epoch: int = 10  # small mask subsets are repeated to give this many steps per epoch
    eval_batch_size: int = 64
    overlay_slices: int = 4  # validation tumour slices drawn to TensorBoard each epoch (0: none)
    # phantoms (no data_dir): lesion phantoms (lesions.py) of synth_n slices, synth_slices per subject
    synth_n: int = 512
    synth_slices: int = 16
    # sweep mode: fractions x inits x seeds, one sub-run each, finished ones skipped
    sweep: bool = False
    fractions: tuple[float, ...] = (0.1, 1.0)
    inits: tuple[str, ...] = ("simclr", "random")
    seeds: tuple[int, ...] = (0, 1, 2)
    # geometry only: flips, mild crop/rotation/shift; a little intensity jitter on the image
    aug_crop_scale_min: float = 0.8
    aug_rotate_deg: float = 10.0
    aug_translate: float = 0.05
    aug_brightness: float = 0.1
    aug_contrast: float = 0.1
    aug_gamma: float = 0.1
    aug_blur_prob: float = 0.0
    aug_noise_std: float = 0.0

    def __post_init__(self) -> None:
        CommonConfig.__post_init__(self)
        AugmentConfig.__post_init__(self)
        _check(self.arch in SEG_ARCHS, "arch", f"must be one of {', '.join(SEG_ARCHS)} for segmentation")
        for init in (self.init, *self.inits):
            _check(init in ("simclr", "random", "imagenet") or _is_path_like(init), "init",
                   f"{init!r} must be simclr, random, imagenet or a path to a state_dict")
        for frac in (self.mask_frac, *self.fractions):
            _check(0 < frac <= 1, "mask_frac", f"is {frac}; a masked-patient fraction must be in (0, 1]")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.bce_weight >= 0 and self.dice_weight >= 0 and self.bce_weight + self.dice_weight > 0,
               "bce_weight/dice_weight", "must be >= 0 and not both 0")
        _check(0 < self.threshold < 1, "threshold", "must be in (0, 1)")
        _check(self.image_size % 32 == 0, "image_size", "must be a multiple of 32 for the U-Net (5 down-samplings)")
        _check(0 <= self.warmup_epochs <= max(self.epochs, 0), "warmup_epochs", "must be in [0, epochs]")
