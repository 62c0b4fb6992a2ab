"""The reference loops ``bench`` times ours against: what a user writes from lightly's and torchvision's examples.

  simclr    torchvision ResNet (3-channel), fp32, contiguous memory; lightly SimCLRTransform on PIL
            images in a DataLoader, lightly NTXentLoss, the same SGD, SAM or LookSAM as ours.
  finetune  torchvision ImageFolder over PNG files written into a temporary directory, torchvision
            transforms in a DataLoader, cross-entropy, the same fused AdamW as our fine-tuning.
Each loop is a dict of callables: ``full`` (a step with its data path), ``net`` (the network step
on a fixed batch), ``aug`` (the data path alone), and ``start``/``stop``/``close`` for the
DataLoader's workers, which run only while their own loop is being timed.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
from pathlib import Path

import torch
import torchvision
from lightly.transforms import SimCLRTransform
from PIL import Image

from simclr_ad import losses, runtime
from simclr_ad.config import FinetuneConfig, PretrainConfig
from simclr_ad.finetune import train_step
from simclr_ad.models import SimCLRModel
from simclr_ad.pretrain import build_optimizer, simclr_step


class _PILViews(torch.utils.data.Dataset):
    """The reference data path: per-image PIL transforms, as in lightly's SimCLR example.

    Endless (indices wrap), so the timed steps never hit an epoch boundary's refill stall.
    """

    def __init__(self, images: list[Image.Image], size: int):
        self.images = images
        self.transform = SimCLRTransform(input_size=size)

    def __len__(self) -> int:
        return 1000 * len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i % len(self.images)])


def reference_loader(dataset, args) -> dict:
    """The reference loops' shuffled DataLoader (``--ref-workers`` processes), pausable between rounds."""
    return _pausable_loader(torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.ref_workers,
        persistent_workers=args.ref_workers > 0))


def _pausable_loader(loader) -> dict:
    """``start``/``stop``/``close`` for a reference DataLoader's workers, and its batch iterator.

    The workers (persistent, forked once) run only between ``start`` and ``stop``, so they
    prefetch alongside the reference's own steps, as in a real run, but never take the
    cores from another loop; ``stop`` pauses them with SIGSTOP.
    """
    state = {"batches": None}

    def signal_workers(sig: int) -> None:
        for worker in multiprocessing.active_children():
            os.kill(worker.pid, sig)

    def start():
        if state["batches"] is None:  # fork the workers and wait for a first batch (untimed)
            state["batches"] = iter(loader)
            next(state["batches"])
        signal_workers(signal.SIGCONT)

    return {"next": lambda: next(state["batches"]), "start": start,
            "stop": lambda: signal_workers(signal.SIGSTOP),
            "close": lambda: signal_workers(signal.SIGCONT)}  # paused workers could not shut down


def simclr_loop(args, pil_images):
    """The reference SimCLR loop's steps, plus ``start``/``stop`` of its DataLoader workers."""
    torch.manual_seed(0)
    backbone = torchvision.models.__dict__[args.arch](weights=None)
    dim = backbone.fc.in_features
    backbone.fc = torch.nn.Identity()
    model = SimCLRModel(backbone, dim)
    cfg = PretrainConfig(arch=args.arch, optimizer=args.optimizer, image_size=args.image_size,
                         sam_every=getattr(args, "sam_every", 1))
    optimizer = build_optimizer(cfg, model)
    loss_fn = losses.nt_xent(0.5)
    dataset = _PILViews(pil_images, args.image_size)
    loader = reference_loader(dataset, args)
    rt = runtime.Runtime(device=torch.device("cpu"), dtype=None, channels_last=False)

    def full_step():
        x0, x1 = loader["next"]()
        simclr_step(model, x0, x1, loss_fn, optimizer, rt, "bench")

    x0, x1 = torch.utils.data.default_collate([dataset[i] for i in range(args.batch_size)])
    return {"full": full_step, "net": lambda: simclr_step(model, x0, x1, loss_fn, optimizer, rt, "bench"),
            "aug": lambda: [dataset[i] for i in range(args.batch_size)], **loader}


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Our fine-tuning's optimizer (finetune.run), with FinetuneConfig's default lr and weight decay."""
    cfg = FinetuneConfig()
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                             weight_decay=cfg.weight_decay, fused=True)


class _Endless(torch.utils.data.Dataset):
    """A dataset repeated (indices wrap), so the timed steps never hit an epoch boundary's refill stall."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return 1000 * len(self.dataset)

    def __getitem__(self, i: int):
        return self.dataset[i % len(self.dataset)]


def write_image_folder(images: torch.Tensor, labels, classes: list[str], root: Path) -> Path:
    """uint8 [N, 1, S, S] images as ``root/<class>/<i>.png``, the layout torchvision's ImageFolder reads."""
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / classes[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy(), "L").save(folder / f"{i:05d}.png")
    return root


def finetune_loop(args, images):
    """The reference supervised loop: ImageFolder over PNG files, torchvision transforms, a DataLoader, fp32.

    The transforms are the torchvision counterparts of FinetuneConfig's augmentation.
    """
    from torchvision import transforms as T

    pick = torch.linspace(0, len(images) - 1, 4 * args.batch_size).long()  # every class, not the first one only
    tmp = tempfile.TemporaryDirectory(prefix="simclr_ad_bench_")  # removed when this process ends
    root = write_image_folder(images.images[pick], images.labels[pick.numpy()], images.classes, Path(tmp.name))
    cfg = FinetuneConfig()
    transform = T.Compose([
        T.RandomResizedCrop(args.image_size, scale=(cfg.aug_crop_scale_min, 1.0)), T.RandomHorizontalFlip(),
        T.RandomAffine(cfg.aug_rotate_deg, translate=(cfg.aug_translate, cfg.aug_translate)),
        T.ColorJitter(brightness=cfg.aug_brightness, contrast=cfg.aug_contrast), T.ToTensor(),
        T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    dataset = _Endless(torchvision.datasets.ImageFolder(str(root), transform=transform))
    torch.manual_seed(0)
    model = torchvision.models.__dict__[args.arch](weights=None)
    model.fc = torch.nn.Sequential(torch.nn.Dropout(cfg.dropout), torch.nn.Linear(model.fc.in_features,
                                                                                  len(images.classes)))
    optimizer, loss_fn = adamw(model), torch.nn.CrossEntropyLoss()
    loader = reference_loader(dataset, args)
    rt = runtime.Runtime(device=torch.device("cpu"), dtype=None, channels_last=False)

    def full_step():
        x, y = loader["next"]()
        train_step(model, x, y, loss_fn, optimizer, rt)

    x, y = torch.utils.data.default_collate([dataset[i] for i in range(args.batch_size)])
    return {"full": full_step, "net": lambda: train_step(model, x, y, loss_fn, optimizer, rt),
            "aug": lambda: [dataset[i] for i in range(args.batch_size)], **loader, "tmp": tmp}
