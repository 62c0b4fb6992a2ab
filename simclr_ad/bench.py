"""Benchmark our SimCLR training step against the loop a user would write from lightly's example.

    python -m simclr_ad.bench [--arch resnet50] [--image-size 128] [--batch-size 64] [--steps 10]
                              [--optimizer sgd|sam] [--json OUT] [--quick]

Both loops run in one process, interleaved in rounds, so machine noise hits both:
  reference  torchvision ResNet (3-channel), lightly SimCLRTransform on PIL images in a
             DataLoader, fp32, contiguous memory, lightly NTXentLoss, SGD (or the same SAM);
  ours       the real simclr_ad.pretrain step and data path: batched augmentation of the
             uint8 cache, bf16 autocast, channels_last, SGD or SAM.
It also measures the machine's practical peak (a large GEMM in our training dtype) and
our achieved training FLOP/s from torch.utils.flop_counter, giving the MFU. Peak RSS is
measured per loop in a fresh child process that runs only that loop (DataLoader workers
not included), since memory one loop frees stays mapped and would be charged to the other.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
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


def _peak_rss_alone(argv: list[str], loop: str) -> float:
    """Peak RSS of a fresh process that runs only ``loop`` (warm-up plus two steps).

    Measured apart because, in the shared process, memory one loop freed stays mapped
    (see runtime.MALLOC_TUNABLES) and would be counted against the other.
    """
    proc = subprocess.run([sys.executable, "-m", "simclr_ad.bench", *argv, "--rss-only", loop],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench --rss-only {loop} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def gemm_peak_gflops(dtype: torch.dtype | None, n: int = 2048, repeats: int = 8) -> float:
    """Practical peak: FLOP/s of a large square matmul in ``dtype`` (fp32 if None)."""
    a = torch.randn(n, n, dtype=dtype or torch.float32)
    b = torch.randn(n, n, dtype=dtype or torch.float32)
    a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / min(times) / 1e9


class _PILViews(torch.utils.data.Dataset):
    """The reference data path: per-image PIL transforms, as in lightly's SimCLR example."""

    def __init__(self, images: list[Image.Image], size: int):
        self.images = images
        self.transform = SimCLRTransform(input_size=size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i])


def _step_seconds(step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        step()
        out.append(time.perf_counter() - started)
    return out


def _reference(args, pil_images):
    torch.manual_seed(0)
    backbone = torchvision.models.__dict__[args.arch](weights=None)
    dim = backbone.fc.in_features
    backbone.fc = torch.nn.Identity()
    model = SimCLRModel(backbone, dim)
    cfg = PretrainConfig(arch=args.arch, optimizer=args.optimizer, image_size=args.image_size)
    optimizer = build_optimizer(cfg, model)
    loss_fn = losses.nt_xent(0.5)
    loader = torch.utils.data.DataLoader(_PILViews(pil_images, args.image_size), batch_size=args.batch_size,
                                         shuffle=True, drop_last=True, num_workers=args.ref_workers,
                                         persistent_workers=args.ref_workers > 0)
    rt = runtime.Runtime(device=torch.device("cpu"), dtype=None, channels_last=False)
    batches = iter(loader)

    def next_views():
        nonlocal batches
        try:
            return next(batches)
        except StopIteration:
            batches = iter(loader)
            return next(batches)

    def full_step():
        x0, x1 = next_views()
        simclr_step(model, x0, x1, loss_fn, optimizer, rt, "bench")

    x0, x1 = next_views()
    return {"full": full_step, "net": lambda: simclr_step(model, x0, x1, loss_fn, optimizer, rt, "bench"),
            "aug": lambda: [loader.dataset[i] for i in range(args.batch_size)], "model": model}


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
            "model": model, "rt": rt, "views": (v0, v1)}


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


TARGETS = {"resnet18": 2.5, "resnet50": 3.5}  # the performance issue's speedup targets


def summary_markdown(results: list[dict]) -> str:
    """A README for a folder of bench JSONs: the table, the commands, the machine and the dates."""
    lines = ["# Benchmark: our SimCLR step vs the lightly-example loop", "",
             "Written by `python -m simclr_ad.bench --summarize results/bench` from the JSON files here",
             "(made by `bash scripts/bench.sh`). img/s counts images with two views, forward and backward,",
             "both SAM passes included; median of the timed steps after warm-up, so expect 10-20 % noise.",
             "Peak RSS: a fresh process running only that loop (DataLoader workers not counted).", "",
             "| model @ input, batch, optimizer | reference img/s | ours img/s | speedup (target) "
             "| aug views/s (x network) | GEMM peak GFLOP/s | achieved GFLOP/s | MFU (target 0.70) "
             "| peak RSS MB ours / reference |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["arch"], r["optimizer"])):
        target = TARGETS.get(r["arch"])
        mark = "" if target is None else f" ({'met' if r['speedup'] >= target else 'not met'}: {target}x)"
        lines.append(
            f"| {r['arch']} @ {r['image_size']}, {r['batch_size']}, {r['optimizer'].upper()} "
            f"| {r['reference_img_per_s']:.1f} | {r['ours_img_per_s']:.1f} | {r['speedup']:.2f}x{mark} "
            f"| {r['aug_views_per_s']:.0f} ({r['aug_headroom']:.0f}x) | {r['gemm_peak_gflops']:.0f} "
            f"| {r['achieved_gflops']:.0f} | {r['mfu']:.2f} "
            f"| {r['peak_rss_mb']:.0f} / {r['reference_peak_rss_mb']:.0f} |")
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
    parser.add_argument("--rss-only", choices=["reference", "ours"], default=None,
                        help=argparse.SUPPRESS)  # internal: the peak-RSS child process
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

    cache = _load_images(args)
    pil_images = [Image.fromarray(img[0].numpy(), "L").convert("RGB") for img in cache[:4 * args.batch_size]]
    if args.rss_only:
        loop = _reference(args, pil_images) if args.rss_only == "reference" else _ours(args, cache)
        _step_seconds(loop["full"], args.warmup + 2)
        result = {"peak_rss_mb": _peak_rss_mb()}
        print(json.dumps(result))
        return result
    loops = {"reference": _reference(args, pil_images), "ours": _ours(args, cache)}
    timings = {name: {"full": [], "net": [], "aug": []} for name in loops}
    per_round = max(1, args.steps // args.rounds)
    for name, loop in loops.items():  # warm-up: allocator, oneDNN kernels, DataLoader workers
        _step_seconds(loop["full"], args.warmup)
    for _ in range(args.rounds):
        for name, loop in loops.items():
            for kind in ("full", "net", "aug"):
                timings[name][kind] += _step_seconds(loop[kind], per_round)
    child_argv = list(sys.argv[1:] if argv is None else argv)
    peak_rss = {name: _peak_rss_alone(child_argv, name) for name in loops}

    ours = loops["ours"]
    rt = ours["rt"]
    flops = training_flops(ours["model"], ours["views"], rt, args.optimizer == "sam")
    peak = gemm_peak_gflops(rt.dtype)
    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in timings.items()}
    b = args.batch_size
    result = {
        "arch": args.arch, "image_size": args.image_size, "batch_size": b, "optimizer": args.optimizer,
        "small_map_gemm": args.small_map_gemm,
        "reference_img_per_s": b / median["reference"]["full"], "ours_img_per_s": b / median["ours"]["full"],
        "speedup": median["reference"]["full"] / median["ours"]["full"],
        "reference_net_img_per_s": b / median["reference"]["net"], "ours_net_img_per_s": b / median["ours"]["net"],
        "aug_views_per_s": 2 * b / median["ours"]["aug"],
        "reference_aug_views_per_s": 2 * b / median["reference"]["aug"],
        "aug_headroom": (2 * b / median["ours"]["aug"]) / (2 * b / median["ours"]["net"]),
        "peak_rss_mb": peak_rss["ours"], "reference_peak_rss_mb": peak_rss["reference"],
        "gemm_peak_gflops": peak, "train_dtype": str(rt.dtype or torch.float32).replace("torch.", ""),
        "achieved_gflops": flops / median["ours"]["full"] / 1e9,
        "mfu": flops / median["ours"]["full"] / 1e9 / peak,
        "step_gflop": flops / 1e9, "steps_timed": per_round * args.rounds, "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
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
