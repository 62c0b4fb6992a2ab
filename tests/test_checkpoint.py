"""checkpoint.py: the one format, written atomically (more resume tests: test_reliability, test_runs)."""
import os

import pytest
import torch

from simclr_ad import checkpoint


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save({"epoch": torch.tensor(1)}, path)

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(checkpoint.CheckpointError, match="No space left on device.*intact"):
        checkpoint.save({"epoch": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["epoch"].item() == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
