"""The ``python -m simclr_ad.data`` command line: inspect, synth, split and audit (and the audit's montage).

    python -m simclr_ad.data inspect --data-dir DIR [--json] [--preview PNG]
    python -m simclr_ad.data synth --out DIR [--n 6400] [--seed 0] [--size 128] [--format png|nifti]
    python -m simclr_ad.data split --data-dir DIR --out splits.json [--group-by default] [--val-frac 0.1]
        [--test-frac 0.2] [--split-seed 0] [--config configs/cpu.yaml]
    python -m simclr_ad.data split --data-dir DIR --folds 5 --out folds/   # folds/fold0.json ... + folds.json
    python -m simclr_ad.data audit --data-dir DIR --splits splits.json [--montage PNG] [--out JSON]

`split` and `audit` read the keys they share with the stages (data_dir, image_size, cache_dir,
group_by, val_frac, test_frac, split_seed, the volume slicing, ...) through the stages' config
path (config.build_parser): the top-level keys of ``--config`` YAML, overridden by the same
flags, so a split infers the groups a stage would. The older spellings ``--val``, ``--test`` and
``--seed`` (the split seed) still work.

The library code lives in data.py (loading), splits.py (the split file, the audit), folds.py
(k-fold splits) and grouping.py (near-duplicates); this module only parses arguments and prints.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from simclr_ad import folds, volume_data
from simclr_ad.config import CommonConfig, build_parser, config_from_args, replace
from simclr_ad.data import DataError, ImageSet, decode, describe, load_dataset, scan
from simclr_ad.errors import friendly_errors
from simclr_ad.fileio import atomic_write_text
from simclr_ad.grouping import WEAK_LINK
from simclr_ad.splits import SPLITS, _check_shares, audit, make_splits, read_splits, write_splits

# the stage config keys `split` and `audit` share (CommonConfig fields; audit also reads `splits`)
DATA_KEYS = ("data_dir", "image_size", "strict", "allow_absolute_paths", "cache_dir", "slice_axis", "slices",
             "intensity_percentiles")
SPLIT_KEYS = (*DATA_KEYS, "group_by", "val_frac", "test_frac", "split_seed")


def save_montage(images: ImageSet, report: dict, out_png: str | Path) -> None:
    """One row per example pair of the audit: the two images side by side with splits and cosine."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: the caller's backend stays untouched

    examples = report.get("examples", [])
    if images.images is None:
        raise DataError("the montage needs decoded images (call simclr_ad.data.decode first)")
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    rows = max(1, len(examples))
    fig = Figure(figsize=(4.4, 2.2 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 2, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    if not examples:
        axes[0, 0].text(0, 0.5, "no near-duplicate pair crosses the splits", fontsize=9)
    for row, example in enumerate(examples):
        a, b = images.indices_of([example["a"], example["b"]])
        for col, (idx, key) in enumerate(((a, "a"), (b, "b"))):
            axes[row, col].imshow(images.images[idx, 0].numpy(), cmap="gray", vmin=0, vmax=255)
            axes[row, col].set_title(f"{example['splits'].split('|')[col]}: {Path(example[key]).name}", fontsize=7)
        axes[row, 0].text(1.02, -0.08, f"cos {example['cosine']:.4f}", transform=axes[row, 0].transAxes,
                          ha="center", fontsize=7)
    fig.suptitle(f"{report.get('cross_split_pairs', 0)} near-duplicate pairs cross splits "
                 f"(group_by={report.get('group_by')})", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


# --------------------------------------------------------------------------- split and audit

def _load(cfg: CommonConfig, command: str) -> ImageSet:
    """The dataset as the stages load it (data.load_dataset), with unreadable files summarised."""
    if not cfg.data_dir:
        raise DataError(f"`{command}` needs --data-dir DIR (class folders, pre-split folders or a manifest)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unreadable files are listed in the summary instead
        images = load_dataset(replace(cfg, progress=False))
    if images.skipped:
        print(f"skipped {len(images.skipped)} file(s): " + ", ".join(p for p, _ in images.skipped[:5])
              + (" ..." if len(images.skipped) > 5 else ""))
    return images


def format_summary(splits: dict) -> str:
    """Per-split class counts and group statistics, as printed by `data split`."""
    stats = splits["group_stats"]
    lines = [f"group_by {splits['group_by']} (asked: {splits.get('group_by_requested')}), seed {splits['seed']}: "
             f"{stats['n_groups']} groups, sizes {stats['min']}..{stats['max']} (median {stats['median']:g})"
             + (f", {stats['mixed_class_groups']} with mixed classes" if stats.get("mixed_class_groups") else "")]
    width = max(len(c) for c in splits["classes"] + ["total"])
    lines.append(f"  {'':<{width}}  " + "  ".join(f"{s:>14}" for s in SPLITS))
    for name in splits["classes"]:
        cells = [f"{splits['counts'][s][name]:6d} img {splits['group_counts'][s][name]:4d} gr" for s in SPLITS]
        lines.append(f"  {name:<{width}}  " + "  ".join(cells))
    totals = [f"{sum(splits['counts'][s].values()):6d} img {len({splits['groups'][p] for p in splits[s]}):4d} gr"
              for s in SPLITS]
    lines.append(f"  {'total':<{width}}  " + "  ".join(totals))
    fractions = sorted(splits["fractions"].items(), key=lambda kv: float(kv[0]))
    lines.append("  label fractions (train images): " + ", ".join(f"{k}: {len(v)}" for k, v in fractions))
    if splits.get("grouping"):
        ratio = splits["grouping"]["threshold"]["ratio"]
        cos = splits["grouping"]["threshold"]["typical_cosine"]
        lines.append("  near-duplicate ratio per class: "
                     + ", ".join(f"{c} {ratio[c]:.3f} (~cos {cos[c]})" for c in splits["classes"]))
    lines += [f"  note: {note}" for note in splits.get("notes", [])]
    return "\n".join(lines)


def _cmd_split(args: argparse.Namespace) -> None:
    cfg = config_from_args(CommonConfig, None, args)
    if not args.out:
        raise DataError("`split` needs --out FILE (e.g. --out splits.json; with --folds a directory)")
    if args.keep_fragments and not args.folds:
        raise DataError("--keep-fragments applies to --folds K (the folds stay those of the stitched groups)")
    if args.folds and args.test_frac is not None:
        raise DataError(f"--folds {args.folds} tests 1/{args.folds} of the subjects in each fold; "
                        "--test-frac does not apply to it (leave it out)")
    _check_shares(cfg.val_frac, cfg.test_frac)  # before the slow decode
    images = _load(cfg, "split")
    if args.folds:
        made = folds.make_folds(images, args.folds, cfg.group_by, cfg.val_frac, cfg.split_seed,
                                keep_fragments=args.keep_fragments)
        summary, removed = folds.write_folds(made, args.out)
        for path in removed:
            print(f"removed {path}: a fold of an earlier split there with more than {args.folds} folds", file=sys.stderr)
        print(json.dumps(json.loads(summary.read_text()), indent=2) if args.json else
              f"wrote {args.folds} fold split files and {summary}: {len(images)} images from {images.root}\n"
              + folds.format_folds(made))
        return
    splits = make_splits(images, cfg.group_by, cfg.val_frac, cfg.test_frac, cfg.split_seed)
    write_splits(splits, args.out)
    if args.json:
        print(json.dumps({k: splits[k] for k in ("group_by", "seed", "classes", "counts", "group_counts",
                                                 "group_stats", "grouping", "notes")}, indent=2, sort_keys=True))
        return
    print(f"wrote {args.out}: {len(images)} images from {images.root}")
    print(format_summary(splits))


def _cmd_audit(args: argparse.Namespace) -> None:
    cfg = config_from_args(CommonConfig, None, args)
    if not cfg.splits:
        raise DataError("`audit` needs --splits FILE (written by `python -m simclr_ad.data split`)")
    splits = read_splits(cfg.splits)
    images = _load(cfg, "audit")
    report = audit(images, splits, max_examples=args.max_examples)
    if args.montage:
        save_montage(images, report, args.montage)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(report, indent=2, sort_keys=True) + "\n")
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return
    pairs = ", ".join(f"{k}: {v}" for k, v in report["pairs_by_splits"].items())
    twins = report["share_with_train_twin"]
    print(f"{cfg.splits} (group_by {report['group_by']}): {report['cross_split_pairs']} of "
          f"{report['near_duplicate_pairs']} near-duplicate pairs cross splits ({pairs})")
    print("  share with a near-twin in train: "
          + ", ".join(f"{k} {100 * v:.1f}%" for k, v in twins.items() if v is not None))
    weak = report["weakest_link"]
    if weak["min"] is not None:
        print(f"  weakest link inside a group (cosine): min {weak['min']}, 10th percentile {weak['p10']}, median "
              f"{weak['median']}; {weak[f'below_{WEAK_LINK}']} of {weak['n_groups']} groups below {WEAK_LINK}"
              + (f", {weak['unconnected']} not connected by near pairs" if weak["unconnected"] else ""))
    for example in report["examples"]:
        print(f"  {example['cosine']:.5f}  {example['splits']:<10}  {example['a']}  ~  {example['b']}")
    if args.montage:
        print(f"  montage: {args.montage}")


def _shared(keys: tuple[str, ...]) -> argparse.ArgumentParser:
    """The stage config flags of ``keys`` (and --config), as a parent of a sub-command's parser."""
    parser = build_parser(CommonConfig, "", keys, parser=argparse.ArgumentParser(add_help=False))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def add_cli(subparsers) -> None:
    """Register `split` and `audit` on the sub-parsers of ``python -m simclr_ad.data``."""
    split = subparsers.add_parser("split", parents=[_shared(SPLIT_KEYS)],
                                  help="write a grouped, stratified splits.json with label fractions")
    split.add_argument("--out", default=None, help="split file to write, e.g. splits.json (--folds: a directory)")
    split.add_argument("--folds", type=int, default=0, metavar="K",
                       help="write K subject-grouped, class-stratified folds (fold<k>.json each, and folds.json): "
                            "every subject tested once; validation from the other subjects")
    split.add_argument("--keep-fragments", action="store_true",
                       help="with --folds and --group-by auto: the same folds, but each chain fragment that the "
                            "auto grouping attached to a group is recorded as its own subject (sensitivity check)")
    # the older names of val_frac, test_frac and split_seed, still accepted
    split.add_argument("--val", dest="val_frac", type=float, default=None, help=argparse.SUPPRESS)
    split.add_argument("--test", dest="test_frac", type=float, default=None, help=argparse.SUPPRESS)
    split.add_argument("--seed", dest="split_seed", type=int, default=None, help="the same as --split-seed")
    split.set_defaults(handler=_cmd_split)

    check = subparsers.add_parser("audit", parents=[_shared((*DATA_KEYS, "splits"))],
                                  help="count near-duplicate pairs that cross train/val/test")
    check.add_argument("--montage", default=None, help="save a PNG of the worst crossing pairs")
    check.add_argument("--out", default=None, help="also write the JSON report to this file")
    check.add_argument("--max-examples", type=int, default=12, help="crossing pairs listed, worst first (default 12)")
    check.set_defaults(handler=_cmd_audit)


# --------------------------------------------------------------------------- inspect and synth

def _cmd_inspect(args: argparse.Namespace) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = decode(scan(args.data_dir, slicing=volume_data.slicing_of(args)), 32, args.cache_dir, strict=False)
    report = describe(found)
    if args.preview:
        report["preview"] = str(volume_data.preview(found, args.preview))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"data dir : {report['root']}\nlayout   : {report['layout']}")
    print(f"images   : {report['n_images']} readable"
          + (f", {report['n_subjects']} subjects" if report["subjects_known"] else ", no subject ids"))
    width = max(len(c) for c in report["classes"])
    for name, count in report["classes"].items():
        share = 100.0 * count / max(1, report["n_images"])
        print(f"  {name:<{width}}  {count:6d}  {share:5.1f}%")
    for split, counts in report.get("splits", {}).items():
        print(f"  {split}: " + ", ".join(f"{c}={n}" for c, n in counts.items()))
    print("sizes    : " + ", ".join(f"{s} x{n}" for s, n in report["image_sizes"].items()))
    print("modes    : " + ", ".join(f"{m} x{n}" for m, n in report["image_modes"].items()))
    if "volumes" in report:
        vols, spv = report["volumes"], report["volumes"]["slices_per_volume"]
        print(f"volumes  : {vols['n_volumes']}, {spv['min']}..{spv['max']} {vols['slice_axis']} slices each "
              f"(slices={vols['slices']})" + (f"; preview: {report['preview']}" if "preview" in report else ""))
    if report["unreadable"]:
        print(f"skipped  : {len(report['unreadable'])} file(s)")
        for path, reason in report["unreadable_reasons"].items():
            print(f"  {path}: {reason}")


def _cmd_synth(args: argparse.Namespace) -> None:
    from simclr_ad import phantom_files

    if not args.out and not args.preview:
        raise DataError("`synth` needs --out DIR (the dataset) and/or --preview PNG (a picture of it)")
    if args.preview:
        print(f"preview: {phantom_files.preview(args.preview, seed=args.seed, size=args.size)}")
    if args.out and args.format == "nifti":
        out = phantom_files.write_volumes(args.out, n=args.n, seed=args.seed, size=args.size)
        print(f"wrote {args.n} phantom slices as NIfTI volumes, one per subject, to {out}")
    elif args.out:
        out = phantom_files.write_dataset(args.out, n=args.n, seed=args.seed, size=args.size)
        print(f"wrote {args.n} phantom images to {out} (manifest: {out / 'manifest.csv'})")


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simclr_ad.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="describe a dataset: layout, classes, sizes, unreadable files")
    inspect.add_argument("--data-dir", required=True, help="dataset root (class folders, pre-split or manifest)")
    inspect.add_argument("--cache-dir", default=None, help="decoded-image cache (default ~/.cache/simclr_ad)")
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    volume_data.add_cli_args(inspect)
    synth = sub.add_parser("synth", help="write the synthetic phantom dataset")
    synth.add_argument("--out", default=None, help="write the dataset here (class folders + manifest.csv)")
    synth.add_argument("--preview", default=None, help="save a grid of examples per grade, with masks, as PNG")
    synth.add_argument("--n", type=int, default=6400, help="phantom images (default 6400)")
    synth.add_argument("--seed", type=int, default=0, help="phantom seed (default 0)")
    synth.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    synth.add_argument("--format", choices=("png", "nifti"), default="png",
                       help="png: class folders of slices + manifest.csv; nifti: one .nii.gz volume per subject")
    add_cli(sub)
    args = parser.parse_args(argv)
    {"inspect": _cmd_inspect, "synth": _cmd_synth}.get(args.command, getattr(args, "handler", None))(args)


if __name__ == "__main__":
    main()
