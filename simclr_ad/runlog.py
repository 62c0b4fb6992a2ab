"""The one logging path: TensorBoard scalars + one JSON line per record, on rank 0 only."""
from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

from simclr_ad.errors import UserError
from simclr_ad.fileio import atomic_write_text


class RunLog:
    """Writes ``metrics.jsonl`` and ``tb/`` in a run dir. Disabled (no-op) on ranks other than 0.

    ``resume_epoch`` drops JSON lines of epochs after it, so a resumed run does not
    repeat the epochs it is about to redo; None (nothing to resume) starts the file afresh.
    Every write replaces the whole file atomically: a full disk never leaves a torn line.
    """

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_epoch: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._writer = None
        self._tb_dir = Path(run_dir) / "tb"
        self._lines: list[str] = []
        if enabled and self.path.is_file():
            kept = [] if resume_epoch is None else \
                [r for r in read_records(self.path) if r.get("epoch", -1) <= resume_epoch]
            self._lines = [json.dumps(r) + "\n" for r in kept]
            atomic_write_text(self.path, "".join(self._lines))

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
        line = json.dumps(record, sort_keys=False) + "\n"
        atomic_write_text(self.path, "".join(self._lines) + line)  # the old file stays if this fails
        self._lines.append(line)
        for key, value in record.items():
            if key not in ("epoch", "time") and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``, in order.

    A torn last line (an append cut short by a full disk or a kill, before writes were atomic)
    is dropped with a warning; a bad line before the last is an error naming it.
    """
    lines = [(n, line) for n, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace")
                                                .splitlines(), start=1) if line.strip()]
    records = []
    for k, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if k == len(lines) - 1:
                warnings.warn(f"{path}: dropping the torn last line {number} ({line[:40]!r}...)", stacklevel=2)
                break
            raise UserError(f"{path} line {number} is not JSON ({line[:40]!r}); "
                            "remove the line or the file to go on") from None
    return [r for r in records if isinstance(r, dict)]


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic, stable JSON (sorted keys, 2-space indent)."""
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=True) + "\n")
