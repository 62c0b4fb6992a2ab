"""The README of a folder of bench JSON files: rates, speedups and MFU per host class, against the targets.

    python -m simclr_ad.bench --summarize DIR   # writes DIR/README.md
"""
from __future__ import annotations

import json
from pathlib import Path

from simclr_ad import runtime


def _fmt_x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


# The targets, per host class. Speedups against the reference: on classes with fast bf16
# (and for rows from before host classes were recorded, all measured on such a host). MFU: of
# the class's own GEMM peak. A LookSAM step: its cost against an SGD step of the same class.
TARGETS = {"resnet18": 2.5, "resnet50": 3.5}  # SimCLR speedup, fast-bf16 classes
FINETUNE_TARGET = 2.5  # fine-tune speedup, fast-bf16 classes
MFU_TARGETS = {"fast_bf16": {("simclr", "resnet50", 128): 0.70},
               "avx2": {("simclr", "resnet18", 64, "sgd"): 0.80, ("simclr", "resnet18", 128, "sgd"): 0.80}}
LOOKSAM_COST_TARGET = 1.3
UNRECORDED = "not recorded"
CLASS_NOTES = {"amx": "AMX and AVX-512 bf16: bf16 autocast", "avx512_bf16": "AVX-512 bf16: bf16 autocast",
               "avx2": "AVX2, no fast bf16: fp32", "other": "neither AVX2 nor fast bf16: fp32",
               UNRECORDED: "measured before bench recorded the host class (train dtype in each run)"}


def _class(r: dict) -> str:
    return r.get("host_class") or UNRECORDED


def _label(r: dict) -> str:
    if r.get("stage", "simclr") == "finetune":
        optimizer = "fine-tune AdamW"
    elif r.get("sam_every", 1) > 1:
        optimizer = f"LookSAM k={r['sam_every']}"
    else:
        optimizer = r["optimizer"].upper()
    return f"{r['arch']} @ {r['image_size']}, {r['batch_size']}, {optimizer}"


def _speedup_target(r: dict) -> float | None:
    if _class(r) not in (*runtime.FAST_BF16_CLASSES, UNRECORDED):
        return None
    return FINETUNE_TARGET if r.get("stage", "simclr") == "finetune" else TARGETS.get(r["arch"])


def _mfu_target(r: dict) -> float | None:
    family = "fast_bf16" if _class(r) in (*runtime.FAST_BF16_CLASSES, UNRECORDED) else _class(r)
    targets = MFU_TARGETS.get(family, {})
    stage, arch, size = r.get("stage", "simclr"), r["arch"], r["image_size"]
    optimizer = r["optimizer"] if r.get("sam_every", 1) == 1 else "looksam"
    return targets.get((stage, arch, size, optimizer), targets.get((stage, arch, size)))


def _cost_vs_sgd(r: dict, same_class: list[dict]) -> str:
    """Our step time over our SGD step time, same arch, input and batch: only within one host class."""
    if r.get("stage", "simclr") != "simclr" or r["optimizer"] == "sgd":
        return "-"
    sgd = [s for s in same_class if s.get("stage", "simclr") == "simclr" and s["optimizer"] == "sgd"
           and (s["arch"], s["image_size"], s["batch_size"]) == (r["arch"], r["image_size"], r["batch_size"])]
    if not sgd:
        return "-"
    cost = sgd[0]["ours_img_per_s"] / r["ours_img_per_s"]
    target = LOOKSAM_COST_TARGET if r.get("sam_every", 1) > 1 else None
    return f"{cost:.2f}x" + ("" if target is None else f" ({'met' if cost <= target else 'not met'}: <= {target}x)")


def _order(r: dict):
    return (r.get("stage", "simclr"), r["arch"], r["image_size"], r["optimizer"], r.get("sam_every", 1))


def _class_block(host: str, results: list[dict]) -> list[str]:
    lines = [f"## Host class `{host}`: {CLASS_NOTES.get(host, host)}", ""]
    cpus = sorted({f"{r.get('cpu_model', r['machine'])}; flags {' '.join(r.get('cpu_flags', [])) or '?'}"
                   for r in results})
    lines += [f"CPU: {cpu}" for cpu in cpus]
    lines += ["", "| model @ input, batch, optimizer | reference img/s | ours img/s | speedup (target) "
              "| aug views/s (x network) | GEMM peak GFLOP/s | achieved GFLOP/s | MFU (target) "
              "| peak RSS MB ours / reference | speedup, same allocator | step cost vs our SGD (target) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=_order):
        target, mfu_target = _speedup_target(r), _mfu_target(r)
        mark = "" if target is None else f" ({'met' if r['speedup'] >= target else 'not met'}: {target}x)"
        mfu_mark = "" if mfu_target is None else f" ({'met' if r['mfu'] >= mfu_target else 'not met'}: {mfu_target})"
        lines.append(
            f"| {_label(r)} "
            f"| {r['reference_img_per_s']:.1f} | {r['ours_img_per_s']:.1f} | {r['speedup']:.2f}x{mark} "
            f"| {r['aug_views_per_s']:.0f} ({r['aug_headroom']:.0f}x) | {r['gemm_peak_gflops']:.0f} "
            f"| {r['achieved_gflops']:.0f} | {r['mfu']:.2f}{mfu_mark} "
            f"| {r['peak_rss_mb']:.0f} / {r['reference_peak_rss_mb']:.0f} "
            f"| {_fmt_x(r.get('speedup_same_allocator'))} | {_cost_vs_sgd(r, results)} |")
    lines += ["", "Runs:", ""]
    for r in sorted(results, key=_order):
        lines.append(f"- `{r.get('command', '?')}`: {r.get('date', '?')}, commit {r.get('git_sha', '?')}, "
                     f"{r['machine']}, {r['train_dtype']}")
    return lines + [""]


def summary_markdown(results: list[dict]) -> str:
    """A README for bench JSONs: one block per host class (its table, commands, machine and dates).

    No figure of one class is ever set against a figure of another.
    """
    lines = ["# Benchmark: our training steps vs the lightly / torchvision example loops", "",
             "Written by `python -m simclr_ad.bench --summarize DIR` from the JSON files in DIR and in",
             "its per-class folders DIR/<host class>/ (made by `bash scripts/bench.sh`). img/s counts",
             "images per step: SimCLR images with two views, forward and backward, both SAM passes",
             "included (LookSAM: whole k-step cycles); fine-tune images with one view. Median of the",
             "timed units after warm-up, so expect 10-20 % noise. Each loop runs in a process of its",
             "own: the reference as a plain script (glibc's default malloc), ours under",
             "runtime.MALLOC_TUNABLES as our stages run; the 'same allocator' column times the",
             "reference under those settings too. Peak RSS: each loop's own process (DataLoader",
             "workers not counted). MFU is against the GEMM peak of the same run. The step-cost",
             "column divides by the SGD row of the same class (a separate run).", ""]
    by_class: dict[str, list[dict]] = {}
    for r in results:
        by_class.setdefault(_class(r), []).append(r)
    order = [*runtime.HOST_CLASSES, UNRECORDED]
    for host in sorted(by_class, key=lambda h: order.index(h) if h in order else len(order)):
        lines += _class_block(host, by_class[host])
    return "\n".join(lines).rstrip("\n") + "\n"


def bench_jsons(folder: Path) -> list[dict]:
    """The bench JSONs of ``folder`` and of its host-class folders (not ablation/ or reruns/)."""
    files = sorted(folder.glob("*.json"))
    for host in runtime.HOST_CLASSES:
        files += sorted((folder / host).glob("*.json"))
    return [json.loads(f.read_text()) for f in files]
