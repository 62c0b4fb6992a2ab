"""Files that are never torn: atomic writes, content hashes, the code's git SHA, run-dir creation.

Every file simclr_ad writes (checkpoints, records, reports, caches) goes through
``atomic_write_bytes``: a temp file in the same dir, fsync, then ``os.replace``. A kill
or a full disk during a write leaves the previous file intact.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from simclr_ad.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


class FileError(UserError):
    """A file or dir that cannot be written (or read): one line naming it."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a torn one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise FileError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from others
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise FileError(f"cannot write {path}: {err.strerror or err} "
                              "(the previous file, if any, is intact)") from None
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes: which exact encoder (or data file) a run used."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def git_sha() -> Optional[str]:
    """The SHA of the checkout this package runs from, '+dirty' if modified; None outside git.

    Only changes outside results/ count as dirty: a run writing its results there (a bench
    script's second run, say) is still a clean checkout of this code.

    Cached: the first call (stages make it at start-up) speaks for the whole process, so
    editing the tree while a long run goes on does not relabel its later checkpoints.
    """
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)results"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def prepare_run_dir(path: str | Path) -> Path:
    """Create the run dir; an ``--out`` that is a file, or is not writable, is one clear error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileError(f"--out {path} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # per process: torchrun ranks probe at once
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise FileError(f"cannot write to run dir {path}: {err.strerror or err}") from None
    return path


def begin_staged_dir(out_dir: Path, marker: str, what: str) -> Optional[Path]:
    """Start writing a generated directory that is either finished or absent, never half-written.

    Returns None when ``out_dir`` already holds ``marker`` (finished: reuse it); else a fresh
    per-process ``<out_dir>.partial-<pid>`` to write into, then ``finish_staged_dir``. Two
    processes (e.g. torchrun ranks) generating the same set do not collide, and an
    interrupted write is redone. A non-empty ``out_dir`` without the marker is an error.
    """
    if (out_dir / marker).is_file():
        return None
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        if (out_dir / marker).is_file():  # another process just finished it
            return None
        raise UserError(f"{out_dir} exists but has no {marker}, so it is not a finished {what}; "
                        "delete it or choose another directory")
    partial = out_dir.with_name(f"{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)  # left over from an interrupted run with our pid
    return partial


def finish_staged_dir(partial: Path, out_dir: Path, marker: str) -> Path:
    """Rename the finished ``partial`` (which holds ``marker``) to ``out_dir``; returns ``out_dir``."""
    if out_dir.exists():
        out_dir.rmdir()  # empty: the rename takes its place
    try:
        os.replace(partial, out_dir)
    except OSError:
        # Another process may have finished the same set first; theirs is as good as ours.
        if not (out_dir / marker).is_file():
            raise
        shutil.rmtree(partial, ignore_errors=True)
    return out_dir
