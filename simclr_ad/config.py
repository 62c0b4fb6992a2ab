"""Typed, frozen configs per stage: YAML file -> defaults, CLI flags -> overrides.

A YAML file holds keys shared by all stages at top level, plus optional sections
named after a stage (``pretrain:``, ``finetune:``) whose keys apply to that stage
only. A key no stage knows, or a value of the wrong type, is an error naming it.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import yaml

from simclr_ad.errors import UserError
from simclr_ad.fileio import atomic_write_text

CONFIG_FORMAT = 1  # bump when a saved config can no longer be read by this code
ARCHS = ("resnet18", "resnet50", "densenet121", "mobilenet_v2")
CAM_LAYERS = ("auto", "layer1", "layer2", "layer3", "layer4")  # Grad-CAM stages (models.target_layer)


class ConfigError(UserError):
    pass


@dataclass(frozen=True)
class CommonConfig:
    """Keys every stage understands."""

    # data
    data_dir: Optional[str] = None  # dataset root (class folders, split folders or manifest.csv); None: phantoms
    synth_n: int = 2000  # phantom images when data_dir is None
    synth_seed: int = 0  # seed of the phantom dataset
    synth_slices: int = 32  # slices per phantom subject (the Kaggle set has ~32; fewer gives more subjects)
    synth_min_subjects: int = 2  # phantom subjects per class at least (the Kaggle set's rarest class has 2)
    image_size: int = 128  # side in pixels that images are resized to (padded square first)
    strict: bool = False  # unreadable images are an error instead of a named skip
    allow_absolute_paths: bool = False  # manifest paths may point outside the data root
    cache_dir: Optional[str] = None  # decoded-image cache; None: ~/.cache/simclr_ad
    # protocol
    splits: Optional[str] = None  # splits.json; None: computed from the data with the keys below
    group_by: str = "default"  # default|subject|auto|image
    val_frac: float = 0.1  # validation share of all images (by whole groups)
    test_frac: float = 0.2  # test share of all images (by whole groups)
    split_seed: int = 0  # seed of the group assignment to train/val/test
    # model and run
    arch: str = "resnet50"  # backbone: resnet18|resnet50|densenet121|mobilenet_v2, with a one-channel stem
    init: str = "random"  # backbone start: random|imagenet|PATH to a state_dict
    seed: int = 0  # seed of initialisation, batches and augmentation
    epochs: int = 100  # training epochs (a larger value on a finished run's dir extends it)
    batch_size: int = 64  # images per optimisation step (per process under torchrun)
    out: Optional[str] = None  # run dir; None: runs/<stage>-<settings>; re-running with it resumes
    device: str = "auto"  # auto|cpu|cuda
    precision: str = "auto"  # auto (bf16 on CUDA and on fast-bf16 CPUs, see runtime.host_class)|bf16|fp16|fp32
    channels_last: bool = True  # channels_last memory format (faster convolutions on CPU and GPU)
    small_map_gemm: bool = True  # CPU: convs on 2x2 outputs and small or strided 1x1 ones as GEMMs, see smallconv.py
    deterministic: bool = False  # deterministic algorithms: a resumed run matches an uninterrupted one bit for bit
    num_threads: int = 0  # 0: all cores
    sync_bn: bool = True  # SyncBatchNorm under torchrun on GPUs (torch has no CPU SyncBatchNorm)
    progress: bool = True  # show a tqdm progress bar
    # a run dir whose recorded settings differ is refused; --overwrite starts it afresh instead (see rundir.py)
    overwrite: bool = False
    format: int = CONFIG_FORMAT
    # volumes (NIfTI, DICOM; see volumes.py): how each volume is cut into slices
    slice_axis: str = "axial"  # axial|coronal|sagittal, in the canonical (RAS) frame
    slices: str = "brain:20"  # all | A:B (index range) | central:N | brain:X (foreground >= X % of the largest slice's)
    intensity_percentiles: tuple[float, ...] = (0.5, 99.5)  # per-volume clip before scaling to 0..255

    def __post_init__(self) -> None:
        _check(self.image_size >= 16, "image_size", "must be >= 16")
        _check(self.epochs >= 0, "epochs", "must be >= 0")
        _check(1 <= self.batch_size <= 65536, "batch_size", "must be between 1 and 65536")
        _check(self.synth_n >= 8, "synth_n", "must be >= 8")
        _check(self.synth_slices >= 1, "synth_slices", "must be >= 1")
        _check(self.synth_min_subjects >= 1, "synth_min_subjects", "must be >= 1")
        _check(self.arch in ARCHS, "arch", f"must be one of {', '.join(ARCHS)}")
        _check(self.group_by in ("default", "subject", "auto", "image"), "group_by",
               "must be default, subject, auto or image")
        _check(0 < self.val_frac < 1 and 0 < self.test_frac < 1 and self.val_frac + self.test_frac < 1,
               "val_frac/test_frac", "must be in (0, 1) and sum to less than 1")
        _check(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")
        _check(self.precision in ("auto", "bf16", "fp16", "fp32"), "precision",
               "must be auto, bf16, fp16 or fp32")
        _check(self.format <= CONFIG_FORMAT, "format",
               f"is {self.format}, newer than this simclr_ad understands ({CONFIG_FORMAT}); upgrade simclr_ad")
        _check(self.slice_axis in ("axial", "coronal", "sagittal"), "slice_axis", "must be axial, coronal or sagittal")
        _check(_slices_ok(self.slices), "slices", f"is {self.slices!r}: expected all, A:B, central:N or brain:X")
        _check(len(self.intensity_percentiles) == 2 and 0 <= self.intensity_percentiles[0]
               < self.intensity_percentiles[1] <= 100, "intensity_percentiles", "must be two percentiles, low < high")


@dataclass(frozen=True)
class AugmentConfig:
    """Strengths of the batched grayscale augmentations (see augment.py)."""

    aug_crop_scale_min: float = 0.3  # smallest random-resized-crop area share (ImageNet@224 uses 0.08; MRI slices keep more)
    aug_crop_scale_max: float = 1.0  # largest random-resized-crop area share
    aug_flip_prob: float = 0.5  # probability of a horizontal flip
    aug_rotate_deg: float = 10.0  # largest rotation in degrees (either way)
    aug_translate: float = 0.05  # largest shift as a share of the image side
    aug_brightness: float = 0.4  # brightness factor drawn in [1 - this, 1 + this]
    aug_contrast: float = 0.4  # contrast factor around the image mean, drawn in [1 - this, 1 + this]
    aug_gamma: float = 0.3  # gamma exponent exp(u), u drawn in [-this, this]
    aug_blur_prob: float = 0.5  # probability of a Gaussian blur
    aug_blur_sigma: float = 1.5  # max sigma in pixels at 128 px, scaled with image size
    aug_noise_std: float = 0.05  # largest std of additive Gaussian noise (drawn per image)

    def __post_init__(self) -> None:
        _check(0 < self.aug_crop_scale_min <= self.aug_crop_scale_max <= 1, "aug_crop_scale_min",
               "needs 0 < aug_crop_scale_min <= aug_crop_scale_max <= 1")
        for key in ("aug_flip_prob", "aug_blur_prob"):
            _check(0 <= getattr(self, key) <= 1, key, "must be a probability in [0, 1]")
        for key in ("aug_rotate_deg", "aug_translate", "aug_brightness", "aug_contrast", "aug_gamma",
                    "aug_blur_sigma", "aug_noise_std"):
            _check(getattr(self, key) >= 0, key, "must be >= 0")


@dataclass(frozen=True)
class PretrainConfig(AugmentConfig, CommonConfig):
    """SimCLR pretraining. Defaults: the mission's ResNet50 / NT-Xent / SGD+ASAM protocol."""

    pretrain_on: str = "all"  # all|train (train: exclude val and test images of the split)
    optimizer: str = "sam"  # sam|sgd
    lr: float = 1e-2  # base learning rate of SGD (inside SAM)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-6  # weight decay (not on biases and norms)
    sam_rho: float = 2.0  # SAM neighbourhood radius rho
    sam_adaptive: bool = True  # ASAM: scale SAM's perturbation by |w| (Kwon et al. 2021)
    warmup_epochs: int = 10  # linear LR warmup epochs before the cosine decay
    min_lr_ratio: float = 0.0  # LR at the end of the cosine, as a share of lr
    temperature: float = 0.5  # NT-Xent temperature
    # views: two augmentations of one image (SimCLR). subject: the second view is of another slice of the
    # same subject (known ids, else groups inferred without labels), as MICLe (Azizi et al., ICCV 2021).
    positives: str = "views"
    # all: every other sample of the batch is a negative (SimCLR). other_subjects: slices of the anchor's own
    # subject (known ids, else groups inferred without labels) are not negatives: they are near-duplicates
    negatives: str = "all"
    proj_hidden_dim: int = 2048  # hidden width of the projection head
    proj_out_dim: int = 128  # output width of the projection head (the contrastive space)
    knn_k: int = 20  # neighbours of the kNN monitor
    knn_t: float = 0.1  # temperature of the kNN monitor's weighted vote
    knn_every: int = 1  # epochs between kNN monitor evaluations; 0 disables it
    checkpoint_every_steps: int = 0  # also save mid-epoch every N steps; 0: once per epoch
    sam_every: int = 1  # SAM's two passes every N-th step, one pass reusing its direction between (LookSAM); 1: full SAM

    def __post_init__(self) -> None:
        CommonConfig.__post_init__(self)
        AugmentConfig.__post_init__(self)
        _check(self.pretrain_on in ("all", "train"), "pretrain_on", "must be all or train")
        _check(self.optimizer in ("sam", "sgd"), "optimizer", "must be sam or sgd")
        _check(self.positives in ("views", "subject"), "positives", "must be views or subject")
        _check(self.negatives in ("all", "other_subjects"), "negatives", "must be all or other_subjects")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(self.temperature > 0, "temperature", "must be > 0")
        _check(self.init in ("random", "imagenet") or _is_path_like(self.init), "init",
               "must be random, imagenet or a path to a state_dict")
        _check(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        _check(self.sam_every >= 1, "sam_every", "must be >= 1 (1: full SAM)")


@dataclass(frozen=True)
class FinetuneConfig(AugmentConfig, CommonConfig):
    """Supervised fine-tuning / linear probing. Defaults: AdamW 1e-4, wd 1e-8, 100 epochs."""

    label_frac: float = 1.0  # share of the training labels used (nested subsets from the split file)
    # subject: label_frac of each class's training subjects, all their slices; slice: of its images;
    # auto: subject on a grouped split (a diagnosis is per patient), slice on an image split
    label_unit: str = "auto"
    label_subjects: int = 0  # >0: label this many training subjects per class instead of label_frac (subject unit)
    # class order of confusion matrices and tables; empty: Non, Very mild, Mild, Moderate (then any other)
    class_order: tuple[str, ...] = ()
    init: str = "simclr"  # simclr|random|imagenet|PATH
    encoder: Optional[str] = None  # encoder.pt for init=simclr
    mode: str = "finetune"  # finetune|linear
    task: str = "multiclass"  # multiclass|binary
    # task binary: the classes that count as positive
    positive_classes: tuple[str, ...] = ("Very_Mild_Demented", "Mild_Demented", "Moderate_Demented")
    binary_names: tuple[str, ...] = ("Non_Demented", "Demented")  # names of the negative and positive class
    lr: float = 1e-4  # AdamW learning rate
    weight_decay: float = 1e-8  # AdamW weight decay
    # the backbone's learning rate is lr x this (the head's is lr): < 1 keeps a pretrained encoder's features
    # from being overwritten by a fresh head's first large gradients (both arms get the same recipe)
    encoder_lr_mult: float = 1.0
    dropout: float = 0.5  # dropout before the linear head
    class_weights: bool = False  # weight the loss by inverse class frequency of the labelled subset
    early_stop_patience: int = 20  # epochs without val balanced-accuracy gain; 0 disables
    # plateau: ReduceLROnPlateau on the validation loss (the seed project's); cosine: linear warmup over
    # warmup_epochs, then cosine decay per step to zero; constant: lr throughout
    lr_schedule: str = "plateau"
    warmup_epochs: float = 0.0  # cosine only: epochs of linear LR warmup (may be fractional)
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    plateau_patience: int = 5  # plateau only: epochs without val-loss gain before the LR drops
    plateau_factor: float = 0.5  # plateau only: factor the LR is multiplied by
    eval_batch_size: int = 256  # batch size of validation and test inference
    # finetune mode: before each validation, BatchNorm's running statistics are recomputed on up to this many
    # unaugmented labelled training images (precise BN; 0: off, the running averages as trained)
    bn_recalibrate: int = 512
    cam_layer: str = "auto"  # backbone stage Grad-CAM explains: auto (ResNet layer3, 8x8 at 128 px) or layer1..layer4
    min_steps_per_epoch: int = 0  # >0: small label subsets are repeated to give this many steps per epoch
    # sweep mode: run the grid below, one sub-run each, skipping finished ones
    sweep: bool = False  # run the grid fractions x inits x modes x seeds below, one sub-run each
    fractions: tuple[float, ...] = (0.01, 0.1, 0.2, 0.5, 1.0)  # sweep: label fractions
    inits: tuple[str, ...] = ("simclr", "random")  # sweep: backbone inits (simclr needs --encoder)
    modes: tuple[str, ...] = ("finetune",)  # sweep: finetune and/or linear
    seeds: tuple[int, ...] = (0, 1, 2)  # sweep: seeds
    # a dir of run records in the sweep's layout (report --copy-runs writes one): finished cells are taken
    # from there when their settings (and SimCLR encoder) match, e.g. on a fresh machine
    restore_from: Optional[str] = None
    # lighter augmentation than pretraining (each key's help is AugmentConfig's)

    aug_crop_scale_min: float = 0.8
    aug_rotate_deg: float = 5.0
    aug_translate: float = 0.02
    aug_brightness: float = 0.1
    aug_contrast: float = 0.1
    aug_gamma: float = 0.1
    aug_blur_prob: float = 0.0
    aug_noise_std: float = 0.0

    def __post_init__(self) -> None:
        CommonConfig.__post_init__(self)
        AugmentConfig.__post_init__(self)
        _check(0 < self.label_frac <= 1, "label_frac", f"is {self.label_frac}; it must be in (0, 1]")
        _check(self.label_unit in ("auto", "subject", "slice"), "label_unit", "must be auto, subject or slice")
        _check(self.label_subjects >= 0, "label_subjects", "must be >= 0 (0: use label_frac)")
        _check(not (self.label_subjects and self.label_unit == "slice"), "label_subjects",
               "counts subjects: it needs label_unit subject or auto, not slice")
        _check(not (self.label_subjects and self.sweep), "label_subjects",
               "is a single run's budget; a sweep's grid is --fractions (of subjects, with label_unit subject)")
        _check(not (self.label_subjects and self.label_frac != 1), "label_subjects",
               f"replaces label_frac ({self.label_frac}); leave label_frac at 1 with it")
        for frac in self.fractions:
            _check(0 < frac <= 1, "fractions", f"contains {frac}; every fraction must be in (0, 1]")
        _check(self.mode in ("finetune", "linear"), "mode", "must be finetune or linear")
        for mode in self.modes:
            _check(mode in ("finetune", "linear"), "modes", "must list finetune and/or linear")
        _check(self.task in ("multiclass", "binary"), "task", "must be multiclass or binary")
        _check(len(self.binary_names) == 2, "binary_names", "must name exactly two classes (negative, positive)")
        for init in (self.init, *self.inits):
            _check(init in ("simclr", "random", "imagenet") or _is_path_like(init), "init",
                   f"{init!r} must be simclr, random, imagenet or a path to a state_dict")
        _check(self.lr > 0, "lr", "must be > 0")
        _check(0 < self.encoder_lr_mult <= 1, "encoder_lr_mult", "must be in (0, 1]")
        _check(self.bn_recalibrate >= 0, "bn_recalibrate", "must be >= 0 (0: off)")
        _check(0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        _check(self.lr_schedule in ("plateau", "cosine", "constant"), "lr_schedule",
               "must be plateau, cosine or constant")
        _check(0 <= self.warmup_epochs <= max(self.epochs, 0), "warmup_epochs", "must be in [0, epochs]")
        _check(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        _check(self.cam_layer in CAM_LAYERS, "cam_layer", f"must be one of {', '.join(CAM_LAYERS)}")


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
    # sweep: a dir of run records (segreport --copy-runs writes one): matching runs are taken, not re-run
    restore_from: Optional[str] = None
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


STAGES: dict[str, type] = {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "segment": SegmentConfig}


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}' {message}")


def _slices_ok(text: str) -> bool:
    from simclr_ad.volumes import parse_slices

    try:
        parse_slices(text)
    except ValueError:
        return False
    return True


def _is_path_like(value: str) -> bool:
    return "/" in value or value.endswith((".pt", ".pth"))


# --------------------------------------------------------------------------- types

def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0], True
    return tp, False


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; ints are accepted for floats."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' must not be null")
    if typing.get_origin(inner) is tuple:
        item_tp = typing.get_args(inner)[0]
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_coerce(key, item, item_tp) for item in value)
    if inner is bool:
        if isinstance(value, bool):
            return value
    elif inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif inner is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}' expects {getattr(inner, '__name__', inner)}, "
                      f"got {type(value).__name__} {value!r}")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


# --------------------------------------------------------------------------- YAML

def read_yaml_config(path: str | Path, stage: str | None) -> dict[str, Any]:
    """Return the keys of ``path`` that apply to ``stage``, validated against every stage.

    ``stage`` None: the shared (top-level) keys of CommonConfig only, as ``data split`` reads them.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys")
    known = {name for cls in STAGES.values() for name in _field_types(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key in STAGES:
            if not isinstance(value, dict):
                raise ConfigError(f"config section '{key}' in {path} must be a mapping")
            for sub_key in value:
                if sub_key not in _field_types(STAGES[key]):
                    raise ConfigError(f"unknown config key '{key}.{sub_key}' in {path}")
        elif key not in known:
            raise ConfigError(f"unknown config key '{key}' in {path}")
    own = _field_types(STAGES[stage] if stage else CommonConfig)
    for key, value in raw.items():
        if key in own:
            values[key] = _coerce(key, value, own[key])
    for key, value in (raw.get(stage) or {} if stage else {}).items():
        values[key] = _coerce(f"{stage}.{key}", value, own[key])
    return values


# --------------------------------------------------------------------------- CLI

def field_help(cls: type) -> dict[str, str]:
    """One line of help per config field, read from the comments of its definition (the single place).

    A field's help is its trailing ``# comment``, else the comment lines right above it; a subclass
    that redefines a field without a comment keeps its base class's help.
    """
    helps: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        block: list[str] = []
        for line in inspect.getsource(klass).splitlines():
            text = line.strip()
            if text.startswith("#"):
                block.append(text.lstrip("# ").strip())
                continue
            match = re.match(r"([a-z_]+)\s*:[^=]+=[^#]*(?:#\s*(.*))?$", text)
            if match and match.group(1) in klass.__dataclass_fields__:
                own = match.group(2) or " ".join(block)
                if own:
                    helps[match.group(1)] = own.strip()
            block = []
    return helps


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2, no usage dump
        raise ConfigError(message)


def build_parser(cls: type, description: str, keys: typing.Iterable[str] | None = None,
                 parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """``--config`` plus one flag per field of ``cls`` (only ``keys`` when given), on ``parser`` if given."""
    parser = parser or _Parser(description=description, allow_abbrev=False)
    parser.add_argument("--config", help="YAML file with defaults (CLI flags override it)")
    helps = {name: text.replace("%", "%%") for name, text in field_help(cls).items()}  # argparse %-formats help
    wanted = set(keys) if keys is not None else None
    for name, tp in _field_types(cls).items():
        if name == "format" or (wanted is not None and name not in wanted):
            continue
        inner, _ = _unwrap_optional(tp)
        flag = "--" + name.replace("_", "-")
        default = getattr(cls, name, None)
        if inner is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{helps.get(name, '')} (default: {default})".lstrip())
        elif typing.get_origin(inner) is tuple:
            item = typing.get_args(inner)[0]
            parser.add_argument(flag, dest=name, nargs="+", type=item, default=None,
                                help=f"{helps.get(name, '')} (default: {' '.join(map(str, default))})".lstrip())
        else:
            parser.add_argument(flag, dest=name, type=inner, default=None,
                                help=f"{helps.get(name, '')} (default: {default})".lstrip())
    return parser


def parse_config(cls: type, stage: str, argv: list[str] | None, description: str = "",
                 parser: argparse.ArgumentParser | None = None) -> Any:
    """Resolve ``cls`` from dataclass defaults < ``--config`` YAML < CLI flags."""
    parser = parser or build_parser(cls, description)
    return config_from_args(cls, stage, parser.parse_args(argv))


def config_from_args(cls: type, stage: str | None, args: argparse.Namespace) -> Any:
    """``cls`` from dataclass defaults < the ``--config`` YAML named in ``args`` < the flags set in ``args``."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(read_yaml_config(args.config, stage))
    for name in _field_types(cls):
        cli_value = getattr(args, name, None)
        if cli_value is not None:
            values[name] = tuple(cli_value) if isinstance(cli_value, list) else cli_value
    return cls(**values)


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a config saved by ``config_to_dict``; unknown keys and wrong types are errors."""
    own = _field_types(cls)
    unknown = sorted(set(values) - set(own))
    if unknown:
        raise ConfigError(f"unknown config key '{unknown[0]}' (saved by a different simclr_ad version?)")
    return cls(**{k: _coerce(k, v, own[k]) for k, v in values.items()})


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) for YAML, JSON and checkpoints."""
    out = {}
    for key, value in dataclasses.asdict(cfg).items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def write_config(cfg: Any, path: str | Path) -> None:
    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)
