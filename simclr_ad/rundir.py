"""A run directory records one set of settings, and its weights came from exactly those.

``claim`` opens a stage's ``--out``:
  - a lock file (``.lock``, holding the pid) keeps a second process off it; the lock is an
    ``flock``, so a holder that died (SIGKILL, power loss) leaves a stale lock that is taken over;
  - temp files of a save that was killed are removed;
  - the resolved config is compared with the recorded ``config.yaml`` minus the launch keys,
    and the split file's content and the encoder's (or init file's) SHA-256 with the recorded
    ``identity.json``: equal settings resume; a larger ``--epochs`` alone resumes and says so;
    anything else is refused with one line naming the differing keys, unless ``--overwrite``,
    which starts afresh (the run's checkpoints and records are removed).

Locks taken inside a function decorated with ``holds_run_dirs`` are released when it returns.
"""
from __future__ import annotations

import atexit
import errno
import fcntl
import functools
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml

from simclr_ad import fileio, splits
from simclr_ad.config import config_to_dict, write_config
from simclr_ad.errors import UserError
from simclr_ad.runs import IDENTITY_FILE, LAUNCH_KEYS, PREDATED_DEFAULTS, RUN_RECORDS, STATE_FILES, clear, read_config

F = TypeVar("F", bound=Callable[..., Any])

LOCK_FILE = ".lock"
IDENTITY_KEYS = ("splits_sha256", "encoder_sha256", "init_sha256")
SPLIT_KEYS = ("train", "val", "test", "groups", "train_rank", "fractions", "classes", "group_by", "seed")
# keys newer split files add: hashed when present, so older files keep the digest their runs recorded
OPTIONAL_SPLIT_KEYS = ("train_subject_rank", "fold", "n_folds")


class RunDirError(UserError):
    pass


# --------------------------------------------------------------------------- identity

def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A config as YAML stores it (tuples as lists), without the launch keys."""
    plain = yaml.safe_load(yaml.safe_dump(dict(config), sort_keys=True)) or {}
    return {k: v for k, v in plain.items() if k not in LAUNCH_KEYS}


def differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose value differs; a key the record predates (added later to the config) counts as equal."""
    return {k: (recorded[k], wanted[k]) for k in sorted(wanted) if k in recorded and recorded[k] != wanted[k]}


def split_digest(split: dict[str, Any], optional: bool = True) -> str:
    """SHA-256 of what a split decides (paths per split, groups, label subsets), not of its bytes.

    ``optional`` False leaves out the keys newer split files add (OPTIONAL_SPLIT_KEYS).
    """
    kept = {k: split.get(k) for k in SPLIT_KEYS}
    kept.update({k: split[k] for k in OPTIONAL_SPLIT_KEYS if optional and split.get(k) is not None})
    return hashlib.sha256(json.dumps(kept, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogateescape")
                          ).hexdigest()


def _split_file_digest(path: Path) -> str:
    try:
        return split_digest(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, AttributeError):  # not a split file: stages say so when they read it
        return fileio.file_sha256(path)


def identity(cfg: Any) -> dict[str, str | None]:
    """The content hashes a run's weights depend on beyond its config: split file, encoder, init file."""
    def sha(path: str | None) -> str | None:
        return fileio.file_sha256(path) if path and Path(path).is_file() else None

    init = str(getattr(cfg, "init", ""))
    splits = getattr(cfg, "splits", None)
    return {"splits_sha256": _split_file_digest(Path(splits)) if splits and Path(splits).is_file() else None,
            "encoder_sha256": sha(getattr(cfg, "encoder", None)) if init == "simclr" else None,
            "init_sha256": sha(init) if ("/" in init or init.endswith((".pt", ".pth"))) else None}


# --------------------------------------------------------------------------- the resume rule

def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _show(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text[:12] if isinstance(value, str) and len(value) == 64 else text  # a SHA-256: its start


def decide(run_dir: Path, cfg: Any) -> str:
    """'fresh', 'resume' or 'extend' for ``cfg`` in ``run_dir``; other settings are a RunDirError."""
    made = [name for name in STATE_FILES if (run_dir / name).is_file()]
    if getattr(cfg, "overwrite", False) or not made:
        return "fresh"
    recorded = read_config(run_dir)
    if recorded is None:
        raise RunDirError(f"{run_dir} holds {made[0]} but no readable config.yaml saying how it was made; "
                          "pass --overwrite to start afresh, or use another --out")
    wanted = comparable(config_to_dict(cfg))
    diffs = differences({**PREDATED_DEFAULTS, **comparable(recorded)}, wanted)
    known = _read_json(run_dir / IDENTITY_FILE)  # None in run dirs made before it existed
    if known is not None:
        now = identity(cfg)
        diffs.update({k: (known.get(k), now[k]) for k in IDENTITY_KEYS if known.get(k) != now[k]})
    if not diffs:
        return "resume"
    old, new = diffs.get("epochs", (0, 0))
    if set(diffs) == {"epochs"} and new > old and not (run_dir / "metrics.json").is_file():
        return "extend"
    listed = ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in diffs.items())
    what = (f"{run_dir} holds a {recorded.get('arch')} run but --arch is {cfg.arch}"
            if "arch" in diffs else f"{run_dir} holds a run made with other settings")
    finished = (" (finished: its test split was evaluated already)"
                if (run_dir / "metrics.json").is_file() else "")
    raise RunDirError(f"{what}{finished}; differing: {listed}. Re-run with the recorded settings "
                      "(its config.yaml) to resume, pass --overwrite to start afresh, or use another --out")


def claim(cfg: Any, default_out: str, enabled: bool = True) -> Path:
    """Open ``cfg.out`` (or ``default_out``) for this run: lock it, apply the resume rule, record it.

    ``enabled`` False (torchrun ranks other than 0) only creates the dir: rank 0 decides.
    """
    run_dir = locked(cfg.out or default_out, enabled)
    if not enabled:
        return run_dir
    remove_temp_files(run_dir)
    verdict = decide(run_dir, cfg)
    if verdict == "fresh":
        if getattr(cfg, "overwrite", False) and any((run_dir / n).exists() for n in (*STATE_FILES, *RUN_RECORDS)):
            print(f"--overwrite: starting {run_dir} afresh", flush=True)
        clear(run_dir)  # a run that never saved weights leaves no records to append to
        fileio.atomic_write_text(run_dir / IDENTITY_FILE, json.dumps(identity(cfg), indent=2) + "\n")
        write_config(cfg, run_dir / "config.yaml")
    elif verdict == "extend":
        old = (read_config(run_dir) or {}).get("epochs")
        print(f"extending {run_dir} from {old} to {cfg.epochs} epochs: resuming from its last checkpoint",
              flush=True)
        write_config(cfg, run_dir / "config.yaml")
    return run_dir


def locked(path: str | Path, enabled: bool = True) -> Path:
    """Create the dir ``path`` and lock it for this process (``enabled`` False: only create it)."""
    run_dir = fileio.prepare_run_dir(path)
    if enabled:
        _hold(acquire(run_dir), run_dir)
    return run_dir


def write_split(split: dict[str, Any], path: Path, overwrite: bool = False) -> None:
    """Write a sweep's split file, unless one exists that decides otherwise: its cells trained on it."""
    if path.is_file() and not overwrite:
        old = _read_json(path)
        if old is not None and split_digest(old, optional=False) == split_digest(split, optional=False):
            return  # the same split; one written before subject ranks were stored keeps its derived ones
        def show(s: dict | None) -> str:
            if s is None:
                return "unreadable"
            sizes = "/".join(str(len(s.get(k) or [])) for k in ("train", "val", "test"))
            return f"group_by {s.get('group_by')}, seed {s.get('seed')}, {sizes} train/val/test images"
        raise RunDirError(f"{path} holds another split ({show(old)}) than these settings give ({show(split)}), "
                          "and the sweep's cells were trained on it; re-run with the settings that made it, "
                          "pass --overwrite to start the sweep afresh, or use another --out")
    splits.write_splits(split, path)


# --------------------------------------------------------------------------- temp files

def remove_temp_files(run_dir: Path) -> None:
    """Temp files of a save that was killed (``.NAME.XXXX.tmp``), in the run dir and its checkpoints/."""
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            for path in folder.glob(".*.tmp"):
                path.unlink(missing_ok=True)
            for path in folder.glob(".write-test-*"):
                path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- the lock

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(text: str) -> tuple[int | None, str]:
    parts = text.split()
    try:
        return int(parts[0]), parts[1] if len(parts) > 1 else ""
    except (IndexError, ValueError):
        return None, ""


def acquire(run_dir: Path) -> int:
    """Lock ``run_dir`` for this process; returns the lock's file descriptor.

    The lock is an ``flock`` on ``run_dir/.lock``, which holds "pid host". The kernel drops it
    when its holder dies, so a lock left by a killed process is stale and taken over (and said so).
    """
    path = run_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            text = os.pread(fd, 200, 0).decode("utf-8", "replace")
            os.close(fd)
            pid, host = _holder(text)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"--out {run_dir} is in use by another process (pid {pid}"
                                  f"{' on ' + host if host else ''}); wait for it to finish or use another "
                                  f"--out (the lock is {path})") from None
            if pid is not None and pid != os.getpid() and _alive(pid):  # no flock here (some network file systems)
                raise RunDirError(f"--out {run_dir} is in use by pid {pid} (lock file {path})") from None
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no flock: the pid file alone
            break
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # its holder released (unlinked) it between our open and flock: try again
    previous, _ = _holder(os.pread(fd, 200, 0).decode("utf-8", "replace"))
    if previous is not None and previous != os.getpid():
        print(f"taking over the stale lock of pid {previous} (it no longer holds {path})", flush=True)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def release(fd: int, run_dir: Path) -> None:
    """Remove the lock file, then drop the lock (in that order: no one can lock a file being removed)."""
    try:
        (run_dir / LOCK_FILE).unlink(missing_ok=True)
    finally:
        os.close(fd)


_scopes: list[list[tuple[int, Path]]] = []


def _hold(fd: int, run_dir: Path) -> None:
    entry = (fd, run_dir)
    if _scopes:
        _scopes[-1].append(entry)
    else:  # claimed outside a decorated function: held until the process ends
        atexit.register(release, *entry)


def holds_run_dirs(fn: F) -> F:
    """Release the run-dir locks taken while ``fn`` runs when it returns (or raises)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _scopes.append([])
        try:
            return fn(*args, **kwargs)
        finally:
            for fd, run_dir in reversed(_scopes.pop()):
                release(fd, run_dir)

    return wrapper  # type: ignore[return-value]
