"""Device, precision, threads and (optional) torch.distributed, from the config and environment.

Every helper returns single-process values when no process group exists, so the
same code runs under ``torchrun`` and in a plain ``python -m`` on a laptop.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist

from simclr_ad import smallconv

# glibc's default malloc mmaps every allocation above 32 MB and unmaps it when freed, so each
# large activation page-faults afresh on every step. mmap_max=0 serves all of them from the
# heap, trim_threshold keeps freed heap memory mapped, hugetlb=1 backs it with huge pages.
# ResNet50@128 net step on 2 cores, against the earlier mmap_threshold=32MB setting:
# 15.8 -> 20.4 img/s, system time 2.9 s -> 0 per 3 steps.
MALLOC_TUNABLES = ("glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:"
                   "glibc.malloc.trim_threshold=68719476736")


def reexec_with_tuned_malloc() -> None:
    """Restart this ``python -m`` process once with GLIBC_TUNABLES set (Linux only).

    The tunables are read at process start, so they cannot be set from inside.
    Set SIMCLR_AD_NO_REEXEC=1 (or any GLIBC_TUNABLES) to skip.
    """
    if (not sys.platform.startswith("linux") or "GLIBC_TUNABLES" in os.environ
            or os.environ.get("SIMCLR_AD_NO_REEXEC")):
        return
    env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None: fp32
    channels_last: bool
    small_map_gemm: bool = False  # CPU only: see simclr_ad/smallconv.py
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        """Move a model input to the device in the memory format the model uses."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(self.device)
        if self.small_map_gemm and self.device.type == "cpu":
            smallconv.convert(model)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


HOST_CLASSES = ("amx", "avx512_bf16", "avx2", "other")  # fastest first
FAST_BF16_CLASSES = ("amx", "avx512_bf16")  # only there does bf16 autocast beat fp32 (2.1-2.9x on Zen 4)
# the /proc/cpuinfo flags that decide the class and the fp32/bf16 speed, recorded by bench
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str] | None:
    """The first CPU's flags from /proc/cpuinfo (or from ``cpuinfo`` text); None if unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_class(flags: str | set[str] | None = None) -> str:
    """The CPU's ISA class: ``amx``, ``avx512_bf16``, ``avx2`` or ``other``.

    ``flags`` is a space-separated flags string (or set) as in /proc/cpuinfo; None reads this
    host's. Without /proc/cpuinfo (not Linux), torch's own bf16/AMX probes decide.
    """
    found = set(flags.split()) if isinstance(flags, str) else flags
    if found is None:
        found = cpu_flags()
    if found is None:
        found = set()
        if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
            found |= {"amx_tile", "amx_bf16"}
        if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
            found.add("avx512_bf16")
    if {"amx_tile", "amx_bf16"} <= found:
        return "amx"
    if "avx512_bf16" in found:
        return "avx512_bf16"
    return "avx2" if "avx2" in found else "other"


def _pick_dtype(precision: str, device: torch.device, host: str | None = None) -> torch.dtype | None:
    """The autocast dtype; ``auto`` on a CPU picks bf16 only on a fast-bf16 host class, else fp32."""
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if (host or host_class()) in FAST_BF16_CLASSES else None


def setup(cfg, distributed: bool = True) -> Runtime:
    """Initialise threads, determinism, the process group (under torchrun) and the device.

    ``distributed=False`` gives a single-process runtime even under torchrun (each rank
    then works alone, e.g. on its own cells of a fine-tune sweep).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if not distributed:
        world_size, rank = 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        from simclr_ad.errors import UserError

        raise UserError("--device cuda was asked for but no CUDA device is available")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
    if want_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    threads = cfg.num_threads or max(1, (os.cpu_count() or 1) // max(1, local_world))
    torch.set_num_threads(threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif want_cuda:
        torch.backends.cudnn.benchmark = True
    return Runtime(device=device, dtype=_pick_dtype(cfg.precision, device), channels_last=cfg.channels_last,
                   small_map_gemm=cfg.small_map_gemm, rank=rank, world_size=world_size, local_rank=local_rank)


def wrap_ddp(model: torch.nn.Module, rt: Runtime, sync_bn: bool = True) -> torch.nn.Module:
    """The model in DistributedDataParallel under torchrun (SyncBatchNorm on GPUs if asked), else as it is."""
    if not rt.distributed:
        return model
    if sync_bn and rt.device.type == "cuda":  # torch's SyncBatchNorm is GPU-only
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device.type == "cuda"
                                                     else None)


def cleanup() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: float, rt: Runtime) -> float:
    if not rt.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=rt.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / rt.world_size


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rt: Runtime,
                  drop_last: bool = True, min_batches: int = 0) -> list[torch.Tensor]:
    """This rank's batches of indices into ``range(n)`` for one epoch.

    The permutation depends only on (seed, epoch), so every rank agrees on it and a
    resumed run replays the same order; rank r takes every world_size-th batch.
    ``min_batches`` lengthens an epoch over a small set with further permutations,
    so a 1 % label subset still gets that many optimizer steps per epoch.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    global_batch = batch_size * rt.world_size
    orders = [torch.randperm(n, generator=generator)]
    while sum(map(len, orders)) < min_batches * global_batch:
        orders.append(torch.randperm(n, generator=generator))
    order = torch.cat(orders)
    total = max(len(order) // global_batch if drop_last else -(-len(order) // global_batch), 0)
    if min_batches and len(orders) > 1:
        total = min_batches
    return [order[b * global_batch:(b + 1) * global_batch][rt.rank::rt.world_size] for b in range(total)]


@contextlib.contextmanager
def maybe_no_sync(model: torch.nn.Module, active: bool) -> Iterator[None]:
    """DDP's ``no_sync()`` when ``active`` and wrapped in DDP; otherwise nothing."""
    if active and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield
