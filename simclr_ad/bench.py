"""Benchmark our SimCLR training step against the loop a user would write from lightly's example.

    python -m simclr_ad.bench [--arch resnet50] [--image-size 128] [--batch-size 64] [--steps 10]
                              [--optimizer sgd|sam] [--json OUT] [--quick]

The loops, interleaved in rounds so machine noise hits both:
  reference  torchvision ResNet (3-channel), lightly SimCLRTransform on PIL images in a
             DataLoader, fp32, contiguous memory, lightly NTXentLoss, SGD (or the same SAM);
  ours       the real simclr_ad.pretrain step and data path: batched augmentation of the
             uint8 cache, bf16 autocast, channels_last, SGD or SAM.
Each runs in a child process of its own, one at a time, because the allocator policy is
per process: the reference as a plain script runs (glibc's default malloc), ours under
runtime.MALLOC_TUNABLES as our stages run. The reference is timed a second time under our
allocator settings (``speedup_same_allocator``), so the allocator's share is visible.
Peak RSS is each child's own (DataLoader workers not included).
It also measures the machine's practical peak (a large GEMM in our training dtype) and
our achieved training FLOP/s from torch.utils.flop_counter, giving the MFU.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision
from lightly.transforms import SimCLRTransform
from PIL import Image

from simclr_ad import augment, checkpoint, losses, runtime
from simclr_ad.config import PretrainConfig
from simclr_ad.errors import UserError, friendly_errors
from simclr_ad.models import SimCLRModel, build_backbone
from simclr_ad.pretrain import build_optimizer, simclr_step


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_peak_gflops(dtype: torch.dtype | None, n: int = 2048, repeats: int = 8) -> float:
    """Practical peak: FLOP/s of a large square matmul in ``dtype`` (fp32 if None)."""
    a = torch.randn(n, n, dtype=dtype or torch.float32)
    b = torch.randn(n, n, dtype=dtype or torch.float32)
    a @ b
    return 2 * n ** 3 / min(_step_seconds(lambda: a @ b, repeats)) / 1e9


class _PILViews(torch.utils.data.Dataset):
    """The reference data path: per-image PIL transforms, as in lightly's SimCLR example.

    Endless (indices wrap), so the timed steps never hit an epoch boundary's refill stall.
    """

    def __init__(self, images: list[Image.Image], size: int):
        self.images = images
        self.transform = SimCLRTransform(input_size=size)

    def __len__(self) -> int:
        return 1000 * len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i % len(self.images)])


def _step_seconds(step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        step()
        out.append(time.perf_counter() - started)
    return out


def _reference(args, pil_images):
    """The reference loop's steps, plus ``start``/``stop`` of its DataLoader workers.

    The workers (persistent, forked once) run only between ``start`` and ``stop``, so they
    prefetch alongside the reference's own steps, as in a real run, but never take the
    cores from another loop; ``stop`` pauses them with SIGSTOP.
    """
    torch.manual_seed(0)
    backbone = torchvision.models.__dict__[args.arch](weights=None)
    dim = backbone.fc.in_features
    backbone.fc = torch.nn.Identity()
    model = SimCLRModel(backbone, dim)
    cfg = PretrainConfig(arch=args.arch, optimizer=args.optimizer, image_size=args.image_size)
    optimizer = build_optimizer(cfg, model)
    loss_fn = losses.nt_xent(0.5)
    dataset = _PILViews(pil_images, args.image_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.ref_workers, persistent_workers=args.ref_workers > 0)
    rt = runtime.Runtime(device=torch.device("cpu"), dtype=None, channels_last=False)
    state = {"batches": None}

    def signal_workers(sig: int) -> None:
        for worker in multiprocessing.active_children():
            os.kill(worker.pid, sig)

    def start():
        if state["batches"] is None:  # fork the workers and wait for a first batch (untimed)
            state["batches"] = iter(loader)
            next(state["batches"])
        signal_workers(signal.SIGCONT)

    def stop():
        signal_workers(signal.SIGSTOP)

    def full_step():
        x0, x1 = next(state["batches"])
        simclr_step(model, x0, x1, loss_fn, optimizer, rt, "bench")

    x0, x1 = torch.utils.data.default_collate([dataset[i] for i in range(args.batch_size)])
    return {"full": full_step, "net": lambda: simclr_step(model, x0, x1, loss_fn, optimizer, rt, "bench"),
            "aug": lambda: [dataset[i] for i in range(args.batch_size)], "start": start, "stop": stop,
            "close": lambda: signal_workers(signal.SIGCONT)}  # paused workers could not shut down


def _ours(args, cache: torch.Tensor):
    cfg = PretrainConfig(arch=args.arch, optimizer=args.optimizer, image_size=args.image_size,
                         batch_size=args.batch_size, small_map_gemm=args.small_map_gemm, progress=False)
    rt = runtime.setup(cfg)
    torch.manual_seed(0)
    backbone, dim = build_backbone(args.arch)
    model = rt.prepare_model(SimCLRModel(backbone, dim, cfg.proj_hidden_dim, cfg.proj_out_dim))
    optimizer = build_optimizer(cfg, model)
    loss_fn = losses.nt_xent(cfg.temperature)
    generator = torch.Generator().manual_seed(0)
    state = {"epoch": 0, "batches": []}

    def full_step():  # exactly what pretrain.train_one_epoch does per step
        if not state["batches"]:
            state["batches"] = runtime.epoch_batches(len(cache), cfg.batch_size, 0, state["epoch"], rt)
            state["epoch"] += 1
        batch = cache[state["batches"].pop()].to(rt.device)
        x0, x1 = augment.two_views(batch, cfg.image_size, cfg, generator)
        simclr_step(model, rt.to_input(x0), rt.to_input(x1), loss_fn, optimizer, rt, "bench")

    v0, v1 = augment.two_views(cache[:cfg.batch_size], cfg.image_size, cfg, generator)
    v0, v1 = rt.to_input(v0), rt.to_input(v1)
    return {"full": full_step, "net": lambda: simclr_step(model, v0, v1, loss_fn, optimizer, rt, "bench"),
            "aug": lambda: augment.two_views(cache[:cfg.batch_size], cfg.image_size, cfg, generator),
            "start": lambda: None, "stop": lambda: None, "close": lambda: None,
            "info": lambda: {"flops": training_flops(model, (v0, v1), rt, args.optimizer == "sam"),
                             "gemm_peak": gemm_peak_gflops(rt.dtype), "threads": torch.get_num_threads(),
                             "train_dtype": str(rt.dtype or torch.float32).replace("torch.", "")}}


def training_flops(model, views, rt, sam: bool) -> float:
    """FLOPs of one training step (forward + backward; twice with SAM) counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.cat(views)
    with FlopCounterMode(display=False) as counter:
        with rt.autocast():
            out = model(x)
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() * (2 if sam else 1)


def _load_images(args) -> torch.Tensor:
    from simclr_ad import data

    cfg = PretrainConfig(data_dir=args.data_dir, image_size=args.image_size, synth_n=max(512, 4 * args.batch_size),
                         progress=False)
    return data.load_dataset(cfg).images


# Each loop runs in a process of its own, since the allocator policy is per process: the
# lightly-example loop as a plain script (glibc's defaults), the same loop under our
# runtime.MALLOC_TUNABLES, and ours under them, as our stages run.
LOOPS = ("reference", "reference_same_allocator", "ours")


def _serve(args) -> None:
    """Child process: build one loop, then answer the parent's requests, one JSON line each.

    Requests: ``start``/``stop`` (data-loader workers), ``time KIND N`` (seconds of N steps),
    ``peak_rss_mb``, and for ours ``info`` (step FLOPs, GEMM peak, dtype, threads).
    """
    replies, sys.stdout = sys.stdout, sys.stderr  # stdout carries the replies only
    cache = _load_images(args)
    if args.serve == "ours":
        loop = _ours(args, cache)
    else:
        images = [Image.fromarray(img[0].numpy(), "L").convert("RGB") for img in cache[:4 * args.batch_size]]
        loop = _reference(args, images)
    loop["peak_rss_mb"] = _peak_rss_mb
    print(json.dumps("ready"), file=replies, flush=True)
    for line in sys.stdin:
        words = line.split()
        reply = _step_seconds(loop[words[1]], int(words[2])) if words[0] == "time" else loop[words[0]]()
        print(json.dumps(reply), file=replies, flush=True)
    loop["close"]()


class _Child:
    """One loop in its own ``python -m simclr_ad.bench --serve NAME`` process; idle unless asked."""

    def __init__(self, name: str, argv: list[str]):
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        env["SIMCLR_AD_NO_REEXEC"] = "1"
        if name != "reference":
            env["GLIBC_TUNABLES"] = runtime.MALLOC_TUNABLES
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-m", "simclr_ad.bench", *argv, "--serve", name],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.ask()  # built and ready

    def ask(self, *request):
        if request:
            self.proc.stdin.write(" ".join(map(str, request)) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bench's {self.name} process exited with code {self.proc.wait()} "
                               f"(its error is above)")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def _fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


TARGETS = {"resnet18": 2.5, "resnet50": 3.5}  # the performance issue's speedup targets


def summary_markdown(results: list[dict]) -> str:
    """A README for a folder of bench JSONs: the table, the commands, the machine and the dates."""
    lines = ["# Benchmark: our SimCLR step vs the lightly-example loop", "",
             "Written by `python -m simclr_ad.bench --summarize results/bench` from the JSON files here",
             "(made by `bash scripts/bench.sh`). img/s counts images with two views, forward and backward,",
             "both SAM passes included; median of the timed steps after warm-up, so expect 10-20 % noise.",
             "Each loop runs in a process of its own: the reference as a plain script (glibc's default",
             "malloc), ours under runtime.MALLOC_TUNABLES as our stages run; the last column times the",
             "reference under those allocator settings too. Peak RSS: each loop's own process",
             "(DataLoader workers not counted).", "",
             "| model @ input, batch, optimizer | reference img/s | ours img/s | speedup (target) "
             "| aug views/s (x network) | GEMM peak GFLOP/s | achieved GFLOP/s | MFU (target 0.70) "
             "| peak RSS MB ours / reference | speedup, same allocator |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["arch"], r["optimizer"])):
        target = TARGETS.get(r["arch"])
        mark = "" if target is None else f" ({'met' if r['speedup'] >= target else 'not met'}: {target}x)"
        lines.append(
            f"| {r['arch']} @ {r['image_size']}, {r['batch_size']}, {r['optimizer'].upper()} "
            f"| {r['reference_img_per_s']:.1f} | {r['ours_img_per_s']:.1f} | {r['speedup']:.2f}x{mark} "
            f"| {r['aug_views_per_s']:.0f} ({r['aug_headroom']:.0f}x) | {r['gemm_peak_gflops']:.0f} "
            f"| {r['achieved_gflops']:.0f} | {r['mfu']:.2f} "
            f"| {r['peak_rss_mb']:.0f} / {r['reference_peak_rss_mb']:.0f} "
            f"| {_fmt_x(r.get('speedup_same_allocator'))} |")
    lines += ["", "Runs:", ""]
    for r in sorted(results, key=lambda r: (r["arch"], r["optimizer"])):
        lines.append(f"- `{r.get('command', '?')}`: {r.get('date', '?')}, commit {r.get('git_sha', '?')}, "
                     f"{r['machine']}, {r['train_dtype']}")
    return "\n".join(lines) + "\n"


@friendly_errors
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m simclr_ad.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet50"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (steps are split over them)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--optimizer", default="sam", choices=["sgd", "sam"])
    parser.add_argument("--ref-workers", type=int, default=2, help="DataLoader workers of the reference loop")
    parser.add_argument("--no-small-map-gemm", dest="small_map_gemm", action="store_false",
                        help="ours without simclr_ad.smallconv (for the ablation)")
    parser.add_argument("--data-dir", default=None, help="images to use (default: synthetic phantoms)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="ResNet18 at 64 px, few steps: under 3 minutes")
    parser.add_argument("--summarize", metavar="DIR", default=None,
                        help="write DIR/README.md from the bench JSON files in DIR, then stop")
    parser.add_argument("--serve", choices=list(LOOPS), default=None,
                        help=argparse.SUPPRESS)  # internal: a child process that runs one loop
    args = parser.parse_args(argv)
    if args.summarize:
        folder = Path(args.summarize)
        results = [json.loads(f.read_text()) for f in sorted(folder.glob("*.json"))]
        if not results:
            raise UserError(f"no bench JSON files in {folder}")
        (folder / "README.md").write_text(summary_markdown(results))
        print(f"wrote {folder / 'README.md'}")
        return {"written": str(folder / "README.md")}
    if args.quick:
        args.arch, args.image_size, args.steps, args.warmup = "resnet18", 64, 6, 1
    if args.serve:
        return _serve(args)

    child_argv = list(sys.argv[1:] if argv is None else argv)
    _load_images(args)  # generate the phantoms once, before the children read them
    loops = {name: _Child(name, child_argv) for name in LOOPS}
    # "full" steps read the data loader, so they run between its start and stop; "net" and
    # "aug" after. The same-allocator reference only needs its full step.
    parts = {name: ("net", "aug") if name != "reference_same_allocator" else () for name in loops}
    timings = {name: {kind: [] for kind in ("full", *parts[name])} for name in loops}
    per_round = max(1, args.steps // args.rounds)
    for loop in loops.values():  # warm-up: allocator, oneDNN kernels
        loop.ask("start")
        loop.ask("time", "full", args.warmup)
        loop.ask("stop")
    for _ in range(args.rounds):
        for name, loop in loops.items():
            loop.ask("start")
            timings[name]["full"] += loop.ask("time", "full", per_round)
            loop.ask("stop")
            for kind in parts[name]:
                timings[name][kind] += loop.ask("time", kind, per_round)
    peak_rss = {name: loop.ask("peak_rss_mb") for name, loop in loops.items()}
    info = loops["ours"].ask("info")
    flops, peak, threads = info["flops"], info["gemm_peak"], info["threads"]
    for loop in loops.values():
        loop.close()
    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in timings.items()}
    b = args.batch_size
    result = {
        "arch": args.arch, "image_size": args.image_size, "batch_size": b, "optimizer": args.optimizer,
        "small_map_gemm": args.small_map_gemm,
        "reference_img_per_s": b / median["reference"]["full"], "ours_img_per_s": b / median["ours"]["full"],
        "speedup": median["reference"]["full"] / median["ours"]["full"],
        "reference_same_allocator_img_per_s": b / median["reference_same_allocator"]["full"],
        "speedup_same_allocator": median["reference_same_allocator"]["full"] / median["ours"]["full"],
        "reference_net_img_per_s": b / median["reference"]["net"], "ours_net_img_per_s": b / median["ours"]["net"],
        "aug_views_per_s": 2 * b / median["ours"]["aug"],
        "reference_aug_views_per_s": 2 * b / median["reference"]["aug"],
        "aug_headroom": (2 * b / median["ours"]["aug"]) / (2 * b / median["ours"]["net"]),
        "peak_rss_mb": peak_rss["ours"], "reference_peak_rss_mb": peak_rss["reference"],
        "gemm_peak_gflops": peak, "train_dtype": info["train_dtype"],
        "achieved_gflops": flops / median["ours"]["full"] / 1e9,
        "mfu": flops / median["ours"]["full"] / 1e9 / peak,
        "step_gflop": flops / 1e9, "steps_timed": per_round * args.rounds, "threads": threads,
        "machine": f"{_cpu_model()}, {threads} threads, torch {torch.__version__}",
        "command": shlex.join(["python", "-m", "simclr_ad.bench", *child_argv]),
        "git_sha": checkpoint.git_sha(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        from simclr_ad.runlog import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    runtime.reexec_with_tuned_malloc()
    main()
