"""Benchmark our training steps against the loops a user would write from lightly's and torchvision's examples.

    python -m simclr_ad.bench [--arch resnet50] [--image-size 128] [--batch-size 64] [--steps 10]
                              [--stage simclr|finetune] [--optimizer sgd|sam] [--sam-every K]
                              [--json OUT] [--quick] [--profile] [--host-class]

The loops, interleaved in rounds so machine noise hits both:
  reference  a user's loop from lightly's / torchvision's examples (bench_reference.py), fp32, in a
             plain process.
  ours       the real simclr_ad step and data path: batched augmentation of the uint8 cache,
             the host class's training dtype (bf16 autocast where bf16 is fast, else fp32),
             channels_last, smallconv; fine-tuning takes finetune.train_step itself.
With ``--sam-every K`` (LookSAM) both loops run it, and one timed unit is K steps (exactly
one of them takes SAM's two passes), so medians are over whole cycles.
Each runs in a child process of its own, one at a time, because the allocator policy is
per process: the reference as a plain script runs (glibc's default malloc), ours under
runtime.MALLOC_TUNABLES as our stages run. The reference is timed a second time under our
allocator settings (``speedup_same_allocator``), so the allocator's share is visible.
Peak RSS is each child's own (DataLoader workers not included).
It also measures the machine's practical peak (a large GEMM in our training dtype) and
our achieved training FLOP/s from torch.utils.flop_counter, giving the MFU. The result
records the host's ISA class (runtime.host_class) beside the CPU model: figures of
different classes are never compared with each other.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from simclr_ad import augment, bench_reference, fileio, losses, runtime
from simclr_ad.config import FinetuneConfig, PretrainConfig
from simclr_ad.errors import UserError, friendly_errors
from simclr_ad.models import SimCLRModel, build_backbone, build_classifier
from simclr_ad.bench_summary import bench_jsons, summary_markdown
from simclr_ad.finetune import train_step
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


def gemm_peak_gflops(dtype: torch.dtype | None, n: int = 2048, repeats: int = 8) -> float:
    """Practical peak: FLOP/s of a large square matmul in ``dtype`` (fp32 if None)."""
    a = torch.randn(n, n, dtype=dtype or torch.float32)
    b = torch.randn(n, n, dtype=dtype or torch.float32)
    a @ b
    return 2 * n ** 3 / min(_step_seconds(lambda: a @ b, repeats)) / 1e9


def _step_seconds(step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        step()
        out.append(time.perf_counter() - started)
    return out


def _ours(args, cache: torch.Tensor):
    cfg = PretrainConfig(arch=args.arch, optimizer=args.optimizer, image_size=args.image_size,
                         batch_size=args.batch_size, small_map_gemm=args.small_map_gemm, progress=False,
                         sam_every=getattr(args, "sam_every", 1))
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

    def net_step():
        simclr_step(model, v0, v1, loss_fn, optimizer, rt, "bench")

    return {"full": full_step, "net": net_step,
            "aug": lambda: augment.two_views(cache[:cfg.batch_size], cfg.image_size, cfg, generator),
            "start": lambda: None, "stop": lambda: None, "close": lambda: None,
            "profile": lambda: conv_profile(net_step), "info": lambda: _info(model, torch.cat([v0, v1]), rt)}


def _ours_finetune(args, images):
    """Our fine-tuning step and data path (finetune.train_one_epoch's), on the uint8 cache."""
    cfg = FinetuneConfig(arch=args.arch, image_size=args.image_size, batch_size=args.batch_size,
                         small_map_gemm=args.small_map_gemm, progress=False, init="random")
    rt = runtime.setup(cfg)
    torch.manual_seed(0)
    model = rt.prepare_model(build_classifier(args.arch, len(images.classes), cfg.dropout))
    optimizer, loss_fn = bench_reference.adamw(model), torch.nn.CrossEntropyLoss()
    cache, labels = images.images, torch.from_numpy(images.labels)
    generator = torch.Generator().manual_seed(0)
    state = {"epoch": 0, "batches": []}

    def full_step():
        if not state["batches"]:
            state["batches"] = runtime.epoch_batches(len(cache), cfg.batch_size, 0, state["epoch"], rt)
            state["epoch"] += 1
        index = state["batches"].pop()
        x = rt.to_input(augment.augment(cache[index].to(rt.device), cfg.image_size, cfg, generator))
        train_step(model, x, labels[index].to(rt.device), loss_fn, optimizer, rt)

    x = rt.to_input(augment.augment(cache[:cfg.batch_size], cfg.image_size, cfg, generator))
    y = labels[:cfg.batch_size]

    def net_step():
        train_step(model, x, y, loss_fn, optimizer, rt)

    return {"full": full_step, "net": net_step,
            "aug": lambda: augment.augment(cache[:cfg.batch_size], cfg.image_size, cfg, generator),
            "start": lambda: None, "stop": lambda: None, "close": lambda: None,
            "profile": lambda: conv_profile(net_step), "info": lambda: _info(model, x, rt)}


def _info(model, x: torch.Tensor, rt: runtime.Runtime) -> dict:
    return {"pass_flops": training_flops(model, x, rt), "gemm_peak": gemm_peak_gflops(rt.dtype),
            "threads": torch.get_num_threads(), "train_dtype": str(rt.dtype or torch.float32).replace("torch.", "")}


def training_flops(model, x: torch.Tensor, rt) -> float:
    """FLOPs of one forward + backward pass on the model input ``x``, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with rt.autocast():
            out = model(x)
        out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


_GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear")  # smallconv runs some convolutions as these


def conv_profile(step, steps: int = 2, rows: int = 15) -> str:
    """Where a step's convolutions go: torch.profiler over ``steps`` calls of ``step``.

    Two tables: the convolution and GEMM kernels by self time (forward and backward), and
    the forward convolutions by input shape with their achieved GFLOP/s, to set against
    the GEMM peak (which shapes run far below it?).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        for _ in range(steps):
            step()
    by_shape = prof.key_averages(group_by_input_shape=True)
    total_us = sum(e.self_cpu_time_total for e in prof.key_averages())

    def shapes(event) -> str:
        return " ".join("x".join(map(str, s)) for s in event.input_shapes[:2] if s)

    kernels = sorted((e for e in by_shape if "conv" in e.key or e.key in _GEMM_OPS),
                     key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    lines = [f"top convolution/GEMM ops by self time ({steps} steps; share of all profiled op time)",
             f"{'op':<36} {'ms/step':>8} {'share':>6} {'calls':>5}  input shapes"]
    lines += [f"{e.key[:36]:<36} {e.self_cpu_time_total / 1e3 / steps:8.1f} "
              f"{e.self_cpu_time_total / max(total_us, 1):6.1%} {e.count // steps:5d}  {shapes(e)}" for e in kernels]
    forward = sorted((e for e in by_shape if e.key == "aten::conv2d" and e.flops),
                     key=lambda e: e.cpu_time_total, reverse=True)[:rows]
    lines += ["", "forward convolutions by input shape (time includes the kernels they call)",
              f"{'ms/step':>8} {'GFLOP/s':>8} {'calls':>5}  input, weight"]
    lines += [f"{e.cpu_time_total / 1e3 / steps:8.1f} {e.flops / max(e.cpu_time_total, 1) / 1e3:8.0f} "
              f"{e.count // steps:5d}  {shapes(e)}" for e in forward]
    return "\n".join(lines)


def _load_dataset(args):
    from simclr_ad import data

    cfg = PretrainConfig(data_dir=args.data_dir, image_size=args.image_size, synth_n=max(512, 4 * args.batch_size),
                         progress=False)
    return data.load_dataset(cfg)


def _load_images(args) -> torch.Tensor:
    return _load_dataset(args).images


# Each loop runs in a process of its own, since the allocator policy is per process: the
# lightly-example loop as a plain script (glibc's defaults), the same loop under our
# runtime.MALLOC_TUNABLES, and ours under them, as our stages run.
LOOPS = ("reference", "reference_same_allocator", "ours")


def _steps_per_unit(args) -> int:
    """Optimizer steps per timed unit: a whole LookSAM cycle (one two-pass step), else one."""
    return args.sam_every if args.optimizer == "sam" else 1


def _serve(args) -> None:
    """Child process: build one loop, then answer the parent's requests, one JSON line each.

    Requests: ``start``/``stop`` (data-loader workers), ``time KIND N`` (seconds of N units
    of ``_steps_per_unit`` steps), ``peak_rss_mb``, and for ours ``info`` (FLOPs of one pass,
    GEMM peak, dtype, threads) and ``profile`` (conv_profile's tables).
    """
    replies, sys.stdout = sys.stdout, sys.stderr  # stdout carries the replies only
    images = _load_dataset(args)
    if args.stage == "finetune":
        loop = (_ours_finetune if args.serve == "ours" else bench_reference.finetune_loop)(args, images)
    elif args.serve == "ours":
        loop = _ours(args, images.images)
    else:
        pil = [Image.fromarray(img[0].numpy(), "L").convert("RGB") for img in images.images[:4 * args.batch_size]]
        loop = bench_reference.simclr_loop(args, pil)
    loop["peak_rss_mb"] = _peak_rss_mb
    k = _steps_per_unit(args)
    units = {kind: (lambda step=loop[kind]: [step() for _ in range(k)]) for kind in ("full", "net")}
    print(json.dumps("ready"), file=replies, flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[0] == "time":
            reply = _step_seconds(units.get(words[1], loop[words[1]]), int(words[2]))
        else:
            reply = loop[words[0]]()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simclr_ad.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet50"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--stage", default="simclr", choices=["simclr", "finetune"],
                        help="simclr: the pretraining step; finetune: the supervised fine-tuning step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per loop (LookSAM: k-step cycles)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (steps are split over them)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--optimizer", default=None, choices=["sgd", "sam", "adamw"],
                        help="simclr: sgd or sam (default sam); finetune: adamw, its only one")
    parser.add_argument("--sam-every", type=int, default=1,
                        help="with --optimizer sam: SAM's two passes every K-th step (LookSAM); 1: full SAM")
    parser.add_argument("--ref-workers", type=int, default=2, help="DataLoader workers of the reference loop")
    parser.add_argument("--no-small-map-gemm", dest="small_map_gemm", action="store_false",
                        help="ours without simclr_ad.smallconv (for the ablation)")
    parser.add_argument("--data-dir", default=None, help="images to use (default: synthetic phantoms)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true", help="ResNet18 at 64 px, few steps: under 3 minutes")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, print where our step's convolutions go (torch.profiler)")
    parser.add_argument("--summarize", metavar="DIR", default=None,
                        help="write DIR/README.md from the bench JSON files in DIR and DIR/<host class>/, then stop")
    parser.add_argument("--host-class", action="store_true", help="print this host's ISA class, then stop")
    parser.add_argument("--serve", choices=list(LOOPS), default=None,
                        help=argparse.SUPPRESS)  # internal: a child process that runs one loop
    return parser


@friendly_errors
def main(argv: list[str] | None = None) -> dict:
    """``python -m simclr_ad.bench``: time our step against the reference loop's (or summarise, or serve one loop)."""
    args = build_parser().parse_args(argv)
    if args.host_class:
        print(runtime.host_class())
        return {"host_class": runtime.host_class()}
    if args.summarize:
        folder = Path(args.summarize)
        results = bench_jsons(folder)
        if not results:
            raise UserError(f"no bench JSON files in {folder}")
        (folder / "README.md").write_text(summary_markdown(results))
        print(f"wrote {folder / 'README.md'}")
        return {"written": str(folder / "README.md")}
    if args.quick:
        args.arch, args.image_size, args.steps, args.warmup = "resnet18", 64, 6, 1
    args.optimizer = args.optimizer or ("adamw" if args.stage == "finetune" else "sam")
    if (args.stage == "finetune") != (args.optimizer == "adamw"):
        raise UserError(f"--stage {args.stage} does not take --optimizer {args.optimizer} "
                        "(simclr: sgd or sam; finetune: adamw)")
    if args.sam_every < 1 or (args.sam_every > 1 and args.optimizer != "sam"):
        raise UserError("--sam-every must be >= 1, and above 1 only with --stage simclr --optimizer sam")
    if args.serve:
        return _serve(args)

    return measure(args, list(sys.argv[1:] if argv is None else argv))


def measure(args: argparse.Namespace, child_argv: list[str]) -> dict:
    """Each loop in a child process of its own, interleaved over rounds; the medians as the bench JSON."""
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
    profile = loops["ours"].ask("profile") if args.profile else None
    for loop in loops.values():
        loop.close()
    result = _result(args, timings, peak_rss, info, child_argv)
    if profile:
        result["conv_profile"] = profile.splitlines()
    print(json.dumps({k: v for k, v in result.items() if k != "conv_profile"}, indent=2))
    if profile:
        print(profile)
    if args.json:
        from simclr_ad.runlog import write_json

        write_json(args.json, result)
    return result


def _result(args, timings: dict, peak_rss: dict, info: dict, child_argv: list[str]) -> dict:
    """The bench JSON: rates per image (per unit of ``_steps_per_unit`` steps), MFU, the host."""
    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in timings.items()}
    k = _steps_per_unit(args)
    images = args.batch_size * k  # per timed unit
    views = 1 if args.stage == "finetune" else 2
    passes = k + 1 if args.optimizer == "sam" else 1  # forward+backward passes per unit
    flops, peak, threads = info["pass_flops"] * passes, info["gemm_peak"], info["threads"]
    flags = runtime.cpu_flags() or set()
    return {
        "stage": args.stage, "arch": args.arch, "image_size": args.image_size, "batch_size": args.batch_size,
        "optimizer": args.optimizer, "sam_every": args.sam_every, "small_map_gemm": args.small_map_gemm,
        "reference_img_per_s": images / median["reference"]["full"], "ours_img_per_s": images / median["ours"]["full"],
        "speedup": median["reference"]["full"] / median["ours"]["full"],
        "reference_same_allocator_img_per_s": images / median["reference_same_allocator"]["full"],
        "speedup_same_allocator": median["reference_same_allocator"]["full"] / median["ours"]["full"],
        "reference_net_img_per_s": images / median["reference"]["net"],
        "ours_net_img_per_s": images / median["ours"]["net"],
        "aug_views_per_s": views * args.batch_size / median["ours"]["aug"],
        "reference_aug_views_per_s": views * args.batch_size / median["reference"]["aug"],
        "aug_headroom": (views * args.batch_size / median["ours"]["aug"]) / (views * images / median["ours"]["net"]),
        "peak_rss_mb": peak_rss["ours"], "reference_peak_rss_mb": peak_rss["reference"],
        "gemm_peak_gflops": peak, "train_dtype": info["train_dtype"],
        "achieved_gflops": flops / median["ours"]["full"] / 1e9,
        "mfu": flops / median["ours"]["full"] / 1e9 / peak,
        "step_gflop": flops / k / 1e9, "steps_timed": max(1, args.steps // args.rounds) * args.rounds * k,
        "threads": threads, "host_class": runtime.host_class(), "cpu_model": runtime.cpu_model(),
        "cpu_flags": [f for f in runtime.ISA_FLAGS if f in flags],
        "machine": f"{runtime.cpu_model()}, {threads} threads, torch {torch.__version__}",
        "command": shlex.join(["python", "-m", "simclr_ad.bench", *child_argv]),
        "git_sha": fileio.git_sha(), "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


if __name__ == "__main__":
    runtime.reexec_with_tuned_malloc()
    main()
