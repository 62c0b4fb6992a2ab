"""The run-directory format in one place: which files a run writes, how to find and read them.

A stage's run dir holds (see rundir.py for the lock and the resume rule):
  config.yaml     the resolved config (CONFIG_FILE); identity.json, the content hashes it cannot say;
  metrics.jsonl   one record per epoch (runlog.RunLog); metrics.json, the test result, written last;
  last.pt         the checkpoint to resume from (LAST_CHECKPOINT), in both stages; best.pt, the
                  fine-tune model selected on validation; encoder.pt, a pretrain run's backbone;
  predictions.csv a fine-tune run's test predictions; tb/ the TensorBoard logs.

Run dirs made before pretraining moved its checkpoint to the run root keep it at
``checkpoints/last.pt`` (LEGACY_CHECKPOINTS); they still resume (``last_checkpoint``).

A fine-tune run is any dir whose config.yaml has ``label_frac`` (sweep-level and pretrain
configs are not runs); it is complete when it also holds a readable metrics.json.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from simclr_ad.config import FinetuneConfig, SegmentConfig, config_to_dict
from simclr_ad.errors import UserError
from simclr_ad.fileio import atomic_write_bytes, file_sha256

CONFIG_FILE = "config.yaml"
IDENTITY_FILE = "identity.json"  # what config.yaml cannot say: the split file's and the encoder's content
METRICS_FILE = "metrics.json"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
ENCODER_FILE = "encoder.pt"
LEGACY_CHECKPOINTS = ("checkpoints/last.pt",)  # where run dirs of older versions keep last.pt
STATE_FILES = (LAST_CHECKPOINT, BEST_CHECKPOINT, *LEGACY_CHECKPOINTS, ENCODER_FILE, METRICS_FILE)  # a run made these
TEST_PREDICTIONS = "predictions.csv"
PREDICTION_FILES = (TEST_PREDICTIONS, "val_predictions.csv")  # test and validation probabilities per image
REDACTED_PREFIX = "sha1:"  # a predictions.csv path that is a key, not a file name (redact_paths)
RUN_RECORDS = (CONFIG_FILE, IDENTITY_FILE, "metrics.jsonl", METRICS_FILE, *PREDICTION_FILES)
# a run's small record files, never checkpoints; metrics.json last, as it marks a run complete
RECORD_FILES = (CONFIG_FILE, "metrics.jsonl", METRICS_FILE)
# keys that say how a run was launched or which grid it belonged to, not what it computed
LAUNCH_KEYS = frozenset({"out", "progress", "num_threads", "cache_dir", "splits", "encoder", "restore_from",
                         "sweep", "fractions", "inits", "modes", "seeds", "overwrite", "checkpoint_every_steps",
                         "class_order"})
# what a key meant in runs recorded before it existed: label budgets counted slices then; one learning rate
# for the whole network; validation read BatchNorm's running averages as trained
PREDATED_DEFAULTS = {"label_unit": "slice", "label_subjects": 0, "encoder_lr_mult": 1.0, "bn_recalibrate": 0}
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
PROTOCOL_ORDER = ("subject", "auto", "default", "image")  # grouped protocols first: they are the honest ones
INIT_ORDER = ("simclr", "imagenet", "random")
MODE_ORDER = ("finetune", "linear", "reference")


class ReportError(UserError):
    pass


# --------------------------------------------------------------------------- files of one run

def last_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run resumes from: ``last.pt``, or where an older version kept it; None if absent."""
    for name in (LAST_CHECKPOINT, *LEGACY_CHECKPOINTS):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


def remove_legacy_checkpoints(run_dir: Path) -> None:
    """Once ``last.pt`` is written at the run root, an older layout's copy is stale: remove it."""
    for name in LEGACY_CHECKPOINTS:
        (run_dir / name).unlink(missing_ok=True)
        try:
            (run_dir / name).parent.rmdir()  # only when empty
        except OSError:
            pass


def _load_config(run_dir: Path) -> tuple[Any, str | None]:
    """A run's config.yaml as parsed, or (None, why it could not be read)."""
    try:
        return yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8")), None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return None, f"config.yaml unreadable ({type(err).__name__})"


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """A run's config.yaml as a dict; None when it is absent, unreadable or not a mapping."""
    value, _ = _load_config(run_dir)
    return value if isinstance(value, dict) else None


def clear(run_dir: Path) -> None:
    """Remove a run's checkpoints and records (only the files a stage writes, never anything else)."""
    for name in (*STATE_FILES, *RUN_RECORDS):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tb", ignore_errors=True)


# --------------------------------------------------------------------------- finding runs

@dataclass
class Run:
    """One fine-tune run directory; ``metrics`` is None while it is incomplete."""

    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any] | None = None
    problem: str | None = None  # why it is incomplete

    @property
    def complete(self) -> bool:
        return self.metrics is not None

    def get(self, key: str, default: Any = None) -> Any:
        """metrics.json first (what the run resolved), then config.yaml."""
        for source in (self.metrics or {}, self.config):
            if source.get(key) is not None:
                return source[key]
        return default

    @property
    def group_by(self) -> str:
        return str(self.get("group_by", "?"))

    @property
    def protocol(self) -> str:
        """The split grouping, plus the absolute budget of a ``--label-subjects`` run: such a run keeps
        label_frac 1.0 in its config, and must not pool with the runs that label every subject."""
        per_class = int(self.get("label_subjects", 0) or 0)
        return self.group_by + (f", {per_class} subj./class" if per_class else "")

    @property
    def init(self) -> str:
        return str(self.get("init", "?"))

    @property
    def mode(self) -> str:
        return str(self.get("mode", "?"))

    @property
    def label_frac(self) -> float:
        return float(self.get("label_frac", float("nan")))

    @property
    def seed(self) -> int:
        return int(self.get("seed", -1))


def read_metrics(path: Path) -> tuple[dict | None, str | None]:
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return None, f"metrics.json unreadable ({type(err).__name__}: {str(err)[:120]})"
    if not isinstance(metrics, dict):
        return None, "metrics.json does not hold a mapping"
    absent = [k for k in (*METRICS, "init", "mode", "label_frac") if metrics.get(k) is None]
    if absent:
        return None, f"metrics.json lacks {', '.join(absent)}"
    return metrics, None


def read_run(run_dir: Path) -> Run | None:
    """The run in ``run_dir``, or None when its config.yaml is not a single fine-tune run's."""
    config, problem = _load_config(run_dir)
    if problem:
        return Run(run_dir, {}, problem=problem)
    if not isinstance(config, dict) or "label_frac" not in config or config.get("sweep") is True:
        return None
    if not (run_dir / "metrics.json").is_file():
        problem = ("no metrics.json: interrupted (last.pt present; re-running finetune resumes it)"
                   if last_checkpoint(run_dir) is not None else "no metrics.json: not started or failed early")
        return Run(run_dir, config, problem=problem)
    metrics, problem = read_metrics(run_dir / "metrics.json")
    return Run(run_dir, config, metrics, problem)


def _records_key(run_dir: Path) -> bytes:
    """The run's record files' bytes: a copy (``--copy-runs``) of a run has the same ones."""
    digest = hashlib.sha256()
    for name in RECORD_FILES:
        path = run_dir / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"") + b"\0")
    return digest.digest()


def _originality(run_dir: Path) -> tuple[bool, int]:
    """Originals hold checkpoints; copies only records and predictions, nested deeper (REPORT/runs/...)."""
    return ((run_dir / BEST_CHECKPOINT).is_file(), (run_dir / "predictions.csv").is_file(),
            -len(run_dir.resolve().parts))


def find_runs(roots: Sequence[str | Path]) -> list[Run]:
    """Every fine-tune run dir under ``roots`` (recursively), complete or not, each once.

    A run found twice, as itself and as a copy of its records (a report's ``--copy-runs``
    inside a runs dir), counts once: the copy would add a seed that was never run. The
    original (with its checkpoints and predictions) is kept.
    """
    runs, seen, by_records = [], set(), {}
    for root in map(Path, roots):
        if not root.is_dir():
            raise ReportError(f"runs dir not found: {root}")
        for config_file in sorted(root.rglob("config.yaml")):
            run_dir = config_file.parent
            if run_dir.resolve() in seen:
                continue
            seen.add(run_dir.resolve())
            run = read_run(run_dir)
            if run is None:
                continue
            key = _records_key(run_dir)
            if key in by_records:
                kept = by_records[key]
                if _originality(run_dir) > _originality(runs[kept].path):
                    runs[kept] = run
                continue
            by_records[key] = len(runs)
            runs.append(run)
    return runs


def sort_key(protocol: str, init: str, mode: str, frac: float = 0.0) -> tuple:
    def rank(value: str, order: Sequence[str]) -> tuple[int, str]:
        return (order.index(value) if value in order else len(order), value)

    grouping = protocol.split(",")[0]  # "subject, 5 subj./class" sorts with "subject", after it
    return (rank(grouping, PROTOCOL_ORDER), protocol), rank(init, INIT_ORDER), rank(mode, MODE_ORDER), frac



# --------------------------------------------------------------------------- copying and restoring records

def path_key(path: str) -> str:
    """``sha1:`` and 16 hex digits of ``path``; a key stays as it is."""
    return path if path.startswith(REDACTED_PREFIX) else REDACTED_PREFIX + hashlib.sha1(path.encode()).hexdigest()[:16]


def data_groups(group_by: str | None) -> bool:
    """Whether a split's group ids come from the data (a manifest's real patient ids), not from us."""
    return group_by == "subject"


def redact_paths(predictions: bytes, groups: bool = False) -> bytes:
    """A predictions.csv whose ``path`` column holds ``sha1:<16 hex>`` keys of the paths, nothing else changed.

    A real data set's file names can say more than they should (the Kaggle set's name the class);
    the keys still pair the two arms' rows image by image. Keys already redacted stay as they are.
    ``groups``: the ``group`` column is keyed too (real patient ids, e.g. a manifest's subject column).
    """
    rows = list(csv.reader(io.StringIO(predictions.decode("utf-8"), newline="")))
    if not rows or "path" not in rows[0]:
        raise ReportError("predictions.csv without a path column: nothing to redact")
    columns = [rows[0].index(name) for name in ("path", "group") if name in rows[0] and (name == "path" or groups)]
    for row in rows[1:]:
        for column in columns:
            row[column] = path_key(row[column])
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def copy_run_records(runs: Sequence[Run], roots: Sequence[str], dest: Path, redact: bool = False) -> None:
    """Copy each run's small record files and predictions (never checkpoints) to ``dest/<path under its root>``.

    ``redact``: the copy is one to commit from real data: test predictions of trained runs only (what
    pooling reads), each image named by a key (``redact_paths``), and each subject too where the ids
    are the data's own (``group_by: subject``, see ``data_groups``); no validation predictions.
    """
    resolved = [Path(r).resolve() for r in roots]
    for run in runs:
        here = run.path.resolve()
        root = next((r for r in resolved if r == here or r in here.parents), here.parent)
        prefix = Path(root.name) if len(resolved) > 1 else Path()
        predictions = ((TEST_PREDICTIONS,) if run.mode != "reference" else ()) if redact else PREDICTION_FILES
        for name in (*predictions, *RECORD_FILES):  # metrics.json last, as it marks the copy complete
            if (run.path / name).is_file():
                data = (run.path / name).read_bytes()
                atomic_write_bytes(dest / prefix / here.relative_to(root) / name,
                                   redact_paths(data, data_groups(run.group_by))
                                   if redact and name in PREDICTION_FILES else data)


def copy_pretrain_records(run_dir: Path, dest: Path) -> None:
    """Copy a pretrain run's config.yaml and metrics.jsonl (never its checkpoints) to ``dest``."""
    for name in ("config.yaml", "metrics.jsonl"):
        if (run_dir / name).is_file():
            atomic_write_bytes(dest / name, (run_dir / name).read_bytes())


def restore_cell(cfg: FinetuneConfig | SegmentConfig, record_dir: Path) -> bool:
    """Copy a finished cell's records from ``record_dir`` into ``cfg.out`` if they are this very run.

    They are when the records hold test predictions (the report pools them), the recorded config
    equals ``cfg`` on every key but the launch keys (a key the record predates counts as equal; the
    data dir compares as a resolved path), the split file has the recorded protocol and seed, and a
    SimCLR encoder has the recorded SHA-256 (pretraining is deterministic, so a re-run at the same
    code and machine reproduces it). Checkpoints are not records: a restored cell has none.
    """
    metrics_file, config_file = record_dir / METRICS_FILE, record_dir / CONFIG_FILE
    if not (metrics_file.is_file() and config_file.is_file()):
        return False
    if not (record_dir / TEST_PREDICTIONS).is_file():  # without them the report could not pool the cell
        return False
    recorded, metrics = read_config(record_dir), json.loads(metrics_file.read_text())
    if recorded is None:  # unreadable: not a record to trust
        return False
    wanted = yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))
    split = json.loads(Path(cfg.splits).read_text()) if cfg.splits else {}
    recorded = {**{k: v for k, v in PREDATED_DEFAULTS.items() if k in wanted}, **recorded}
    for conf in (recorded, wanted):  # the same data reached from another checkout (a/../shared, b/../shared)
        if conf.get("data_dir"):
            conf["data_dir"] = os.path.realpath(conf["data_dir"])
    same = (all(recorded.get(key, wanted[key]) == wanted[key] for key in wanted if key not in LAUNCH_KEYS)
            and (split.get("group_by"), split.get("seed"), split.get("fold"))
            == (metrics.get("group_by"), metrics.get("split_seed"), metrics.get("fold"))
            and (cfg.init != "simclr" or metrics.get("encoder_sha256") == file_sha256(cfg.encoder)))
    if same:
        clear(Path(cfg.out))  # a half-run of this cell must not sit next to the restored records
        for name in (*PREDICTION_FILES, *RECORD_FILES):
            if (record_dir / name).is_file():
                atomic_write_bytes(Path(cfg.out) / name, (record_dir / name).read_bytes())
    return same


def restore_into_sweep(cell: FinetuneConfig | SegmentConfig, root: Path) -> bool:
    """Whether a sweep's unfinished ``cell`` (under ``root``) was taken from ``cell.restore_from`` (restore_cell)."""
    out = Path(cell.out)
    if not cell.restore_from or ((out / METRICS_FILE).is_file() and not cell.overwrite):  # run() resumes it
        return False
    return restore_cell(cell, Path(cell.restore_from) / out.relative_to(root))
