"""The one checkpoint format, written atomically, loaded with ``weights_only=True``.

A checkpoint is one dict: model, optimizer, scheduler, epoch, step, rng, best_metric,
config, git_sha (plus format, arch and extra). A kill during a save leaves the
previous file intact (fileio.atomic_write_bytes).
"""
from __future__ import annotations

import io
import math
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from simclr_ad import fileio

CHECKPOINT_FORMAT = 1


class CheckpointError(fileio.FileError):
    """A checkpoint that cannot be read, written or resumed from."""


def save(obj: dict[str, Any], path: str | Path) -> None:
    """Serialise with torch.save into memory, then write atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    try:
        fileio.atomic_write_bytes(path, buffer.getvalue())
    except fileio.FileError as err:
        raise CheckpointError(str(err)) from None


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint or state_dict safely; any failure is one clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if unsafe is None:  # garbage, not a payload: the unpickler met bytes it cannot parse
            raise CheckpointError(f"cannot read checkpoint {path}: it is corrupt (its data.pkl does not "
                                  "parse; truncated or overwritten?)") from None
        raise CheckpointError(f"refusing to load {path}: it holds objects other than tensors and plain "
                              f"data (weights_only=True): {unsafe.group(1)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError) as err:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch file): "
                              f"{str(err).splitlines()[0][:160] if str(err) else type(err).__name__}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a dict (got {type(obj).__name__})")
    fmt = obj.get("format", CHECKPOINT_FORMAT) if "model" in obj else CHECKPOINT_FORMAT
    if isinstance(fmt, int) and fmt > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} was written by a newer simclr_ad (checkpoint format {fmt}, "
                              f"this version reads {CHECKPOINT_FORMAT}); upgrade simclr_ad")
    return obj


def state_dict_of(obj: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a full checkpoint, or the dict itself if it is a plain state_dict."""
    if "model" in obj and isinstance(obj["model"], dict):
        return obj["model"]
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError("file is neither a simclr_ad checkpoint nor a state_dict of tensors")


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def make(model: torch.nn.Module, optimizer, scheduler, epoch: int, step: int, best_metric: float | None,
         config: dict[str, Any], arch: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble the one checkpoint dict."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "epoch": epoch,
        "step": step,
        "rng": rng_state(),
        "best_metric": best_metric,
        "config": config,
        "git_sha": fileio.git_sha(),
        "arch": arch,
        "extra": extra or {},
    }


# param-group keys that are torch implementation choices, or that schedules move
_NOT_SETTINGS = {"params", "lr", "initial_lr", "foreach", "fused", "capturable", "differentiable", "maximize",
                 "decoupled_weight_decay"}


def optimizer_mismatch(built: list[dict], restored: list[dict], scheduler=None) -> str | None:
    """How a checkpoint's optimizer differs from the one the config built ("lr 0.001, the config
    asks for 0.01"), or None. The LR is compared at its schedule's base: ``initial_lr`` (LambdaLR)
    or, under ReduceLROnPlateau, the config's LR times a whole power of the plateau factor."""
    if len(built) != len(restored):
        return f"{len(restored)} parameter group(s), the config builds {len(built)}"
    for new, old in zip(built, restored):
        for key in sorted((set(new) | set(old)) - _NOT_SETTINGS):
            a, b = old.get(key), new.get(key)
            if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
                return f"{key} {a}, the config asks for {b}"
        if "initial_lr" in new and "initial_lr" in old:
            if not math.isclose(old["initial_lr"], new["initial_lr"], rel_tol=1e-9):
                return f"lr {old['initial_lr']}, the config asks for {new['initial_lr']}"
        elif isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and 0 < scheduler.factor < 1:
            steps = math.log(old["lr"] / new["lr"]) / math.log(scheduler.factor) if old["lr"] > 0 else 0.0
            if steps < -1e-6 or abs(steps - round(steps)) > 1e-6:
                return f"lr {old['lr']}, the config asks for {new['lr']}"
        elif not math.isclose(old.get("lr", 0.0), new.get("lr", 0.0), rel_tol=1e-9):
            return f"lr {old.get('lr')}, the config asks for {new.get('lr')}"
    return None


def restore(path: Path, model: torch.nn.Module, optimizer=None, scheduler=None,
            arch: str | None = None) -> dict[str, Any] | None:
    """Resume from ``path`` if it exists: weights, optimizer, scheduler and RNG; returns the dict."""
    if not path.is_file():
        return None
    ckpt = load(path)
    if arch is not None and ckpt.get("arch") not in (None, arch):
        raise CheckpointError(f"{path} holds a {ckpt.get('arch')} run but --arch is {arch}; "
                              "use another --out or the same arch")
    model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer") is not None:
        mismatch = optimizer_mismatch(optimizer.param_groups, ckpt["optimizer"].get("param_groups", []), scheduler)
        if mismatch:
            raise CheckpointError(f"{path} was trained with {mismatch}: resuming would keep the old value "
                                  "behind the config's back; resume with the settings it was made with, or "
                                  "pass --overwrite to start afresh")
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("rng"):
        set_rng_state(ckpt["rng"])
    return ckpt
