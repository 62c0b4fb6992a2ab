"""Classify image files with a fine-tuned checkpoint, optionally saving Grad-CAM overlays.

    python -m simclr_ad.predict scan1.png scan2.jpg --checkpoint RUN_DIR/best.pt
        [--gradcam OUT_DIR] [--json] [--num-threads N] [--csv OUT.csv]
    python -m simclr_ad.predict scan.nii.gz dicom_series_dir/ --checkpoint RUN_DIR/best.pt [--gradcam OUT_DIR]
    python -m simclr_ad.predict FOLDER/ manifest.csv --checkpoint RUN_DIR/best.pt --csv predictions.csv
        [--subject-pattern '^(OAS1_\\d+)']

Inputs are image files, volumes, folders (every image and NIfTI file under them, sorted; a folder
holding one DICOM series is a volume) and CSV manifests (``path[,subject][,label]``, paths
relative to the manifest). ``--csv`` writes one row per image (``level`` image; a volume's slices
as ``level`` slice) with its class probabilities, then one row per subject (``level`` subject,
the mean of its images' probabilities) when the manifest, the volume or ``--subject-pattern``
(a regex on the file name; its first group, or the group named ``subject``, is the subject) gives
one. For a binary run the predicted class is P(class 1) >= the threshold the run chose on validation
(its metrics.json: per image, and per subject mean), or ``--threshold``'s; otherwise the most probable.

A volume (NIfTI file, DICOM file or a folder holding one DICOM series) is cut into
slices as the checkpoint's config says (slice_axis, slices, intensity_percentiles);
it gets one probability per slice and a subject-level one (the slices' mean), and
``--gradcam`` writes one overlay per slice.

Each image is decoded like the training data (grayscale, padded square, resized to
the checkpoint's image_size) and normalised with the eval transform. An unreadable
image is reported by name and the others are still predicted; the exit code is 1
if any image failed, else 0.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from simclr_ad import augment, checkpoint, clinical, data, evaluate, fileio, gradcam, volume_data, volumes
from simclr_ad.checkpoint import CheckpointError
from simclr_ad.errors import UserError, friendly_errors
from simclr_ad.models import Classifier, build_classifier


def load_classifier(path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """A fine-tune run's ``best.pt`` (the model selected on validation) as an eval-mode Classifier on the CPU.

    Returns (model, info) with info = {"arch", "classes", "image_size", "task", "config", "cam_layer",
    "threshold", "subject_threshold"}: a binary run's validation-chosen cut-offs on P(class 1), per image and
    per subject mean, from the run's metrics.json beside the checkpoint (None when absent: argmax).
    A checkpoint that is not a fine-tuned classifier is one CheckpointError naming the file.
    """
    try:
        ckpt = checkpoint.load(path)
    except (IndexError, KeyError, AttributeError, TypeError) as err:  # torch.load on some garbage
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a torch file): "
                              f"{type(err).__name__}: {err}") from None
    extra = ckpt.get("extra") or {}
    if "stale_epochs" in extra and "classes" not in extra:  # finetune's last.pt: its extra is the selection state
        raise CheckpointError(f"{path} is a fine-tune run's training checkpoint (last.pt), the model of its last "
                              f"epoch; predict with {Path(path).with_name('best.pt')}, the model selected on "
                              "validation and tested")
    if "model" not in ckpt or "arch" not in ckpt or "classes" not in extra or "image_size" not in extra:
        raise CheckpointError(f"{path} is not a fine-tuned classifier checkpoint (it lacks model/arch/"
                              "extra.classes/extra.image_size); pass RUN_DIR/best.pt of a finetune run")
    config = ckpt.get("config") or {}
    classes = [str(c) for c in extra["classes"]]
    model = build_classifier(ckpt["arch"], len(classes), float(config.get("dropout", 0.5)))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit a {ckpt['arch']} classifier with {len(classes)} "
                              f"classes: {str(err).splitlines()[0][:200]}") from None
    model.eval()
    info = {"arch": ckpt["arch"], "classes": classes, "image_size": int(extra["image_size"]),
            "task": extra.get("task", config.get("task")), "config": config,
            "cam_layer": str(config.get("cam_layer", "auto")), **_thresholds(Path(path), classes)}
    return model, info


def _thresholds(path: Path, classes: list[str]) -> dict[str, float | None]:
    """The binary thresholds the run chose on validation (its metrics.json next to best.pt, when that
    names the same classes), else None. A run without subjects (image split) has no subject threshold:
    its image threshold serves the subject rows too."""
    try:
        metrics = json.loads((path.parent / "metrics.json").read_text()) if len(classes) == 2 else {}
    except (OSError, ValueError):
        metrics = {}
    if not isinstance(metrics, dict) or [str(c) for c in metrics.get("classes") or []] != classes:
        metrics = {}
    found = {key: (float(metrics[key]) if isinstance(metrics.get(key), (int, float)) else None)
             for key in ("threshold", "subject_threshold")}
    found["subject_threshold"] = found["subject_threshold"] if found["subject_threshold"] is not None \
        else found["threshold"]
    return found


def _apply_threshold(info: dict[str, Any], threshold: float | None, where: str) -> None:
    """--threshold over the run's own; say on stderr which cut-off the binary predictions use."""
    if threshold is not None:
        if len(info["classes"]) != 2 or not 0 <= threshold <= 1:
            raise UserError(f"--threshold {threshold}: a cut-off in [0, 1] on P({info['classes'][-1]}), for a "
                            f"binary checkpoint; {where} has {len(info['classes'])} classes")
        info.update(threshold=threshold, subject_threshold=threshold)
    if len(info["classes"]) == 2:
        source = "--threshold" if threshold is not None else "chosen on validation (metrics.json)"
        text = (f"P({info['classes'][1]}) >= {info['threshold']:.4g} per image, >= {info['subject_threshold']:.4g} "
                f"per subject, {source}" if info["threshold"] is not None else
                "the most probable class (no metrics.json with thresholds beside the checkpoint)")
        print(f"binary predictions: {text}", file=sys.stderr)


def class_probabilities(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities [B, C] of normalised inputs [B,1,H,W], in eval mode and fp32."""
    return evaluate.predict_proba(model, inputs, None, None, batch_size)[0]


def _decode_all(paths: Sequence[str], size: int) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Decoded uint8 [S,S] per readable image index, and the reason per unreadable one."""
    decoded, failed = {}, {}
    for i, path in enumerate(paths):
        if not Path(path).is_dir() and Path(path).suffix.lower() not in data.IMAGE_EXTENSIONS:
            failed[i] = f"not an image extension (training reads {'/'.join(data.IMAGE_EXTENSIONS)} only)"
            continue
        try:
            decoded[i] = data.decode_image(Path(path).read_bytes(), size)[0]
        except data.DECODE_ERRORS as err:
            failed[i] = _reason(err)
    return decoded, failed


def _reason(err: Exception) -> str:
    if isinstance(err, FileNotFoundError):
        return "file not found"
    if isinstance(err, IsADirectoryError):
        return "is a directory, not an image"
    if isinstance(err, UnidentifiedImageError):  # its message only names an in-memory buffer
        return "not a readable image (unknown format, corrupt or empty)"
    return f"unreadable ({type(err).__name__}: {getattr(err, 'strerror', None) or str(err)[:160]})"


def _overlay_names(paths: Sequence[str]) -> list[str]:
    """``<stem>_gradcam.png`` per image, numbered when two inputs share a stem."""
    stems = [Path(p).stem for p in paths]
    return [f"{stem}_gradcam.png" if stems.count(stem) == 1 else f"{stem}_{i}_gradcam.png"
            for i, stem in enumerate(stems)]


def _print_text(results: list[dict[str, Any]]) -> None:
    for result in results:
        if "error" in result:
            continue
        probs = ", ".join(f"{c}={p:.3f}" for c, p in result["probabilities"].items())
        print(f"{result['path']}: {result['predicted']}  ({probs})")
        if result.get("mask"):
            print(f"  tumour mask: {result['mask']} ({result['tumour_pixels']} pixels), overlay: {result['overlay']}")
        if "slices" in result:
            print(f"  subject {result['subject']}: mean over {len(result['slices'])} slices; per slice: "
                  + ", ".join(f"{s['slice']} {s['predicted']}" for s in result["slices"]))


def predict_volume(model: Classifier, info: dict[str, Any], path: str,
                   gradcam_dir: str | None = None) -> dict[str, Any]:
    """Per-slice and subject-level (mean over slices) probabilities of one volume; VolumeError if unusable."""
    import types

    classes, size = info["classes"], info["image_size"]
    slicing = volume_data.slicing_of(types.SimpleNamespace(**info["config"]))
    volume = volumes.read_volume(path)
    pixels, kept, positions = volume_data.cut(volume, slicing, size, where=path)
    inputs = augment.prepare(torch.from_numpy(pixels)[:, None], size)
    probabilities = class_probabilities(model, inputs)
    predicted = clinical.predict_at(probabilities, info["threshold"])
    subject = probabilities.mean(axis=0)
    subject_class = int(clinical.predict_at(subject[None], info["subject_threshold"])[0])
    slices = [{"slice": f"{slicing.axis}={int(i)}", "position_mm": round(float(pos), 3),
               "predicted": classes[int(k)], "probabilities": {c: float(p) for c, p in zip(classes, row)}}
              for i, pos, k, row in zip(kept, positions, predicted, probabilities)]
    if gradcam_dir:
        out_dir = Path(gradcam_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        cams = gradcam.compute_cams(model, info["arch"], inputs, predicted, info["cam_layer"])
        stem = volumes.volume_stem(path.rstrip("/")) or "volume"
        for row, (index, entry) in enumerate(zip(kept, slices)):
            target = out_dir / f"{stem}_{slicing.axis}{int(index):03d}_gradcam.png"
            Image.fromarray(gradcam.overlay(gradcam.display_image(inputs[row]), cams[row])).save(target)
            entry["gradcam"] = str(target)
    return {"path": path, "subject": volume.subject, "predicted": classes[subject_class],
            "probabilities": {c: float(p) for c, p in zip(classes, subject)}, "slices": slices}


def _predict_volumes(model: Classifier, info: dict[str, Any], paths: Sequence[str],
                     gradcam_dir: str | None) -> dict[int, dict[str, Any]]:
    """Results of the inputs that are volumes, by input position; an unusable one is an error entry."""
    results = {}
    for i, path in enumerate(paths):
        if not volumes.is_volume_path(path):
            continue
        try:
            results[i] = predict_volume(model, info, path, gradcam_dir)
        except volumes.VolumeError as err:
            print(f"error: {err}", file=sys.stderr)
            results[i] = {"path": path, "error": str(err)}
    return results


def expand_inputs(inputs: Sequence[str], subject_pattern: str | None = None) -> tuple[list[str], dict[str, dict]]:
    """Files, volumes, folders and manifests -> input paths, and per path what is known (subject, label)."""
    paths: list[str] = []
    known: dict[str, dict] = {}
    for given in inputs:
        path = Path(given)
        if path.is_file() and path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
            if rows and "path" not in rows[0]:
                raise UserError(f"manifest {path} needs a 'path' column (and optionally subject, label)")
            for row in rows:
                entry = str(path.parent / row["path"])
                paths.append(entry)
                known[entry] = {k: row[k] for k in ("subject", "label") if row.get(k)}
        elif path.is_dir() and not volumes.is_volume_path(path):
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and (p.suffix.lower() in data.IMAGE_EXTENSIONS or volumes.is_nifti_name(p)))
            if not found:
                raise UserError(f"no images found under {path} (expected {'/'.join(data.IMAGE_EXTENSIONS)} or NIfTI)")
            paths += found
        else:
            paths.append(given)
    if subject_pattern:
        pattern = re.compile(subject_pattern)
        for entry in paths:
            match = pattern.search(Path(entry).name)
            if match and "subject" not in known.get(entry, {}):
                known.setdefault(entry, {})["subject"] = match.groupdict().get("subject") or match.group(
                    1 if pattern.groups else 0)
    return paths, known


def predictions_csv(results: Sequence[dict[str, Any]], known: dict[str, dict], classes: list[str],
                    subject_threshold: float | None = None) -> str:
    """The ``--csv`` table: per image (or volume slice) its probabilities, then per known subject the mean
    (its class at ``subject_threshold`` for a binary task, else the most probable)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["level", "path", "subject", "label", "predicted", *[f"p_{c}" for c in classes]])
    rows, subjects = [], []
    for result in results:
        if "error" in result:
            continue
        info = known.get(result["path"], {})
        subject = info.get("subject") or result.get("subject") or ""  # the manifest or --subject-pattern first
        entries = [(f"{result['path']}#{s['slice']}", "slice", s) for s in result["slices"]] if "slices" in result \
            else [(result["path"], "image", result)]
        for path, level, entry in entries:
            probabilities = [entry["probabilities"][c] for c in classes]
            rows.append([level, path, subject, info.get("label", ""), entry["predicted"], *probabilities])
            subjects.append(subject)
    for row in rows:
        writer.writerow([*row[:5], *[f"{v:.6f}" for v in row[5:]]])
    named = [k for k, s in enumerate(subjects) if s]
    if named:
        probabilities = np.array([rows[k][5:] for k in named], dtype=np.float64)
        names, _, means = clinical.subject_probabilities(probabilities, np.zeros(len(named), dtype=np.int64),
                                                         [subjects[k] for k in named])
        labels = {subjects[k]: rows[k][3] for k in named}
        for name, mean, k in zip(names, means, clinical.predict_at(means, subject_threshold)):
            writer.writerow(["subject", "", name, labels[name], classes[int(k)], *[f"{v:.6f}" for v in mean]])
    return buffer.getvalue()


def _save_overlays(model: Classifier, info: dict[str, Any], inputs: torch.Tensor, predicted: np.ndarray,
                   paths: Sequence[str], order: Sequence[int], results: list[dict[str, Any]], out: str) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cams = gradcam.compute_cams(model, info["arch"], inputs, predicted, info["cam_layer"])
    names = _overlay_names(paths)
    for row, i in enumerate(order):
        target = out_dir / names[i]
        Image.fromarray(gradcam.overlay(gradcam.display_image(inputs[row]), cams[row])).save(target)
        results[i]["gradcam"] = str(target)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m simclr_ad.predict", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", help="image files (.png/.jpg/...), volumes, folders or manifest CSVs")
    parser.add_argument("--csv", metavar="OUT.csv", help="write per-image and per-subject probabilities here")
    parser.add_argument("--subject-pattern", metavar="REGEX",
                        help="the subject of a file: this regex's first (or 'subject') group on its name")
    parser.add_argument("--checkpoint", required=True, help="RUN_DIR/best.pt of a finetune run")
    parser.add_argument("--threshold", type=float, metavar="P",
                        help="binary: predict class 1 when P(class 1) >= P, per image and per subject (default: the "
                             "thresholds the run chose on validation, from its metrics.json; else the argmax)")
    parser.add_argument("--gradcam", metavar="OUT_DIR", help="save a Grad-CAM overlay PNG per image here")
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    parser.add_argument("--num-threads", type=int, default=0, metavar="N", help="torch CPU threads (0: default)")
    parser.add_argument("--segment-checkpoint", metavar="SEG_RUN/best.pt",
                        help="two-stage: where the detector (--checkpoint) says tumour, segment with this U-Net")
    parser.add_argument("--segment-out", metavar="OUT_DIR", default="segmentations",
                        help="where --segment-checkpoint writes <stem>_mask.png and <stem>_overlay.png")
    return parser


@friendly_errors
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)

    # ---------------------------------------------------------------- model and images
    if args.gradcam and Path(args.gradcam).exists() and not Path(args.gradcam).is_dir():
        raise UserError(f"--gradcam {args.gradcam} is a file; give a directory for the overlay PNGs")
    model, info = load_classifier(args.checkpoint)
    _apply_threshold(info, args.threshold, args.checkpoint)
    classes, size = info["classes"], info["image_size"]
    inputs_given, known = expand_inputs(args.images, args.subject_pattern)
    volume_results = _predict_volumes(model, info, inputs_given, args.gradcam)
    args.images = [p for i, p in enumerate(inputs_given) if i not in volume_results]
    decoded, failed = _decode_all(args.images, size)
    for i, reason in failed.items():
        print(f"error: {args.images[i]}: {reason}", file=sys.stderr)
    order = sorted(decoded)
    inputs = augment.prepare(torch.from_numpy(np.stack([decoded[i] for i in order]))[:, None], size) \
        if order else torch.zeros(0, 1, size, size)

    # ---------------------------------------------------------------- predict
    probabilities = class_probabilities(model, inputs)
    predicted = clinical.predict_at(probabilities, info["threshold"]) if order else np.zeros(0, dtype=np.int64)
    results: list[dict[str, Any]] = [{"path": p, "error": failed[i]} if i in failed else {} for i, p in
                                     enumerate(args.images)]
    for row, i in enumerate(order):
        results[i] = {"path": args.images[i], "predicted": classes[int(predicted[row])],
                      "probabilities": {c: float(p) for c, p in zip(classes, probabilities[row])}}

    # ---------------------------------------------------------------- Grad-CAM overlays
    if args.gradcam and order:
        _save_overlays(model, info, inputs, predicted, args.images, order, results, args.gradcam)

    # ---------------------------------------------------------------- two-stage: segment the detected tumours
    if args.segment_checkpoint and order:
        from simclr_ad import segpredict

        positive = segpredict.positive_class(classes)
        segpredict.segment_detected([args.images[i] for i in order], [int(predicted[r]) == positive for r in
                                    range(len(order))], args.segment_checkpoint, args.segment_out,
                                    [results[i] for i in order])

    # ---------------------------------------------------------------- report
    image_results = iter(results)
    results = [volume_results[i] if i in volume_results else next(image_results) for i in range(len(inputs_given))]
    if args.csv:
        fileio.atomic_write_text(Path(args.csv), predictions_csv(results, known, classes, info["subject_threshold"]))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_text(results)
    return 1 if failed or any("error" in r for r in volume_results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
