"""The one logging path: TensorBoard scalars + one JSON line per record, on rank 0 only."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from simclr_ad.checkpoint import atomic_write_text


class RunLog:
    """Writes ``metrics.jsonl`` and ``tb/`` in a run dir. Disabled (no-op) on ranks other than 0.

    ``resume_epoch`` drops JSON lines of epochs after it, so a resumed run does not
    repeat the epochs it is about to redo.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_epoch: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._writer = None
        self._tb_dir = Path(run_dir) / "tb"
        if enabled and resume_epoch is not None and self.path.is_file():
            kept = [r for r in read_records(self.path) if r.get("epoch", -1) <= resume_epoch]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    @property
    def writer(self):
        """The TensorBoard SummaryWriter (None when disabled)."""
        if self.enabled and self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self._tb_dir))
        return self._writer

    def log(self, record: dict[str, Any], step: int, prefix: str = "") -> None:
        """Append ``record`` as a JSON line and its finite numbers as TensorBoard scalars."""
        if not self.enabled:
            return
        record = {**record, "time": round(time.time(), 3)}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=False) + "\n")
        for key, value in record.items():
            if key not in ("epoch", "time") and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


# a run's small record files, never checkpoints; metrics.json last, as it marks a run complete
RECORD_FILES = ("config.yaml", "metrics.jsonl", "metrics.json")


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic, stable JSON (sorted keys, 2-space indent)."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=True) + "\n")
