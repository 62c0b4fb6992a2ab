"""simclr_ad: SimCLR pretraining and few-label fine-tuning for brain MRI.

The Python API has the command line's names: ``simclr_ad.pretrain.run(cfg)``,
``simclr_ad.finetune.run(cfg)`` and ``simclr_ad.report.run(runs=[...], out=...)``, with configs
from ``simclr_ad.config`` (``PretrainConfig``, ``FinetuneConfig``); ``simclr_ad.embed`` gives
frozen features. Importing the package imports no torch and never touches matplotlib's backend.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"


def embed(images: "torch.Tensor", encoder: "str | Path | torch.nn.Module", image_size: int | None = None,
          batch_size: int = 256) -> "torch.Tensor":
    """Frozen, L2-normalised features [N, D] of uint8 images [N,1,H,W] (or [N,H,W]), on the CPU in fp32.

    ``encoder`` is a pretrain run's ``encoder.pt``, its run dir, or a backbone module (e.g.
    ``models.build_backbone("resnet18")[0]``). Images are resized to ``image_size``, by default the
    run's ``image_size`` (from its config.yaml) or, for a module, the images' own size, and
    normalised as in evaluation.
    """
    import torch

    from simclr_ad import checkpoint, evaluate, models, runs
    from simclr_ad.config import ARCHS
    from simclr_ad.runtime import Runtime

    if images.ndim == 3:
        images = images[:, None]
    if isinstance(encoder, torch.nn.Module):
        backbone = encoder
    else:
        path = Path(encoder) / runs.ENCODER_FILE if Path(encoder).is_dir() else Path(encoder)
        state = checkpoint.state_dict_of(checkpoint.load(path))
        arch = models.infer_arch(state)
        if arch is None:
            raise checkpoint.CheckpointError(f"{path} holds no backbone of an arch simclr_ad builds ({', '.join(ARCHS)})")
        backbone, _ = models.build_backbone(arch)
        models.load_backbone_state(backbone, arch, state, str(path))
        image_size = image_size or (runs.read_config(path.parent) or {}).get("image_size")
    rt = Runtime(device=next(backbone.parameters()).device, dtype=None, channels_last=False)
    return evaluate.embed(backbone, images, int(image_size or images.shape[-1]), rt, batch_size)
