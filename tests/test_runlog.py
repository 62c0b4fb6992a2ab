"""runlog.py: the one logging path."""
import os

import pytest

from simclr_ad import fileio
from simclr_ad.runlog import RunLog, read_records


def test_metrics_jsonl_is_written_atomically(tmp_path, monkeypatch):
    log = RunLog(tmp_path, resume_epoch=None)
    log.log({"epoch": 1, "loss": 1.0}, step=1)
    before = (tmp_path / "metrics.jsonl").read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(fileio.FileError, match="No space left"):
        log.log({"epoch": 2, "loss": 0.5}, step=2)
    monkeypatch.undo()
    assert (tmp_path / "metrics.jsonl").read_bytes() == before
    log.log({"epoch": 2, "loss": 0.5}, step=2)
    log.close()
    assert [r["epoch"] for r in read_records(tmp_path / "metrics.jsonl")] == [1, 2]
    assert not list(tmp_path.glob(".*.tmp"))
