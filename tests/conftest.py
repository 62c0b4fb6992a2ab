"""Shared fixtures: tiny generated datasets; never ../shared, never the network."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("SIMCLR_AD_NO_REEXEC", "1")
ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test session shares one cache dir under pytest's tmp, never ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "simclr_cache"
    monkeypatch.setenv("SIMCLR_AD_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread: on a shared 2-core CPU, spinning OpenMP threads make tiny models 10-40x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_png(path: Path, size=(40, 40), mode="L", seed=0, value=None) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        arr = rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8) if value is None else np.full((size[1], size[0]), value, np.uint8)
        img = Image.fromarray(arr, "L")
    elif mode == "RGB":
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    elif mode == "RGBA":
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    elif mode == "P":
        img = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB").convert("P")
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (size[1], size[0]), dtype=np.uint16))
    else:
        raise ValueError(mode)
    img.save(path)
    return path


@pytest.fixture
def class_folders(tmp_path) -> Path:
    """A 3-class folder dataset of 6 random images per class."""
    root = tmp_path / "ds"
    for c, name in enumerate(["Mild_Demented", "Non_Demented", "Very_Mild_Demented"]):
        for i in range(6):
            write_png(root / name / f"img_{i}.png", seed=c * 100 + i)
    return root
