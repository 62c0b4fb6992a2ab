"""Matplotlib figures for reports and TensorBoard. Drawing only: every number comes in computed.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, never through
pyplot, so nothing depends on (or changes) the global backend and no figure leaks
into pyplot's registry. Save with ``fig.savefig(path)``.
"""
from __future__ import annotations

import io
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from simclr_ad import gradcam

_IMAGE_LEVEL = "image"
REFERENCE_MODE = "reference"  # rows of reference baselines (simclr_ad.baselines)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Render ``fig`` to a uint8 RGB array [H,W,3] (for TensorBoard ``add_image``)."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _matrix_panel(fig: Figure, ax, values: np.ndarray, text: list[list[str]], classes: Sequence[str],
                  title: str, vmax: float) -> None:
    image = ax.imshow(np.nan_to_num(values, nan=0.0), cmap="Blues", vmin=0, vmax=vmax if vmax > 0 else 1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, labels=list(classes), rotation=35, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels=list(classes), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    threshold = 0.6 * (vmax if vmax > 0 else 1)
    for i, row in enumerate(text):
        for j, label in enumerate(row):
            value = values[i, j]
            dark = not math.isnan(value) and value > threshold
            ax.text(j, i, label, ha="center", va="center", fontsize=8, color="white" if dark else "black")


def confusion_figure(cm: Sequence[Sequence[float]] | np.ndarray, classes: Sequence[str], title: str) -> Figure:
    """Counts and row-normalised (recall) confusion matrices side by side; rows = true class.

    A class with no true examples has an empty row; its normalised cells read "–".
    """
    counts = np.asarray(cm, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] != len(classes):
        raise ValueError(f"confusion matrix of shape {counts.shape} does not match {len(classes)} classes")
    support = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        normalised = np.where(support > 0, counts / support, np.nan)
    side = 3.2 + 0.55 * len(classes)
    fig = _figure(2 * side + 1.0, side)
    left, right = fig.subplots(1, 2)
    count_text = [[f"{v:g}" for v in row] for row in counts]
    norm_text = [["–" if math.isnan(v) else f"{v:.2f}" for v in row] for row in normalised]
    _matrix_panel(fig, left, counts, count_text, classes, "counts", float(counts.max(initial=0)))
    _matrix_panel(fig, right, normalised, norm_text, classes, "row-normalised (recall)", 1.0)
    fig.suptitle(title, fontsize=11)
    return fig


def arm_label(init: str, mode: str) -> str:
    """Display name of an arm: its initialisation and training mode, e.g. 'simclr+finetune'."""
    return f"{init}+{mode}"


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def label_efficiency_figure(rows: Sequence[Mapping], metric: str = "balanced_accuracy") -> Figure:
    """``metric`` against label fraction (log x), one line per arm with its 95% CI band.

    ``rows`` are summary rows (as in summary.csv): protocol, init, mode, label_frac,
    ``<metric>_mean`` and ``<metric>_ci95`` (blank/None for one seed: no band); the
    metric is a score in [0, 1], the y range, to which the bands are clipped.
    With several protocols each arm gets one line per protocol, image-level dashed.
    Rows whose mode is "reference" are baselines, drawn grey without a band; the chance
    level of each protocol's test split (``chance_<metric>``) is a dotted line.
    """
    protocols = sorted({str(r.get("protocol")) for r in rows})
    lines: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    for row in rows:
        mean = _number(row.get(f"{metric}_mean"))
        if math.isnan(mean):
            continue
        ci = _number(row.get(f"{metric}_ci95"))
        key = (str(row.get("protocol")), str(row["init"]), str(row["mode"]))
        lines.setdefault(key, []).append((float(row["label_frac"]), mean, 0.0 if math.isnan(ci) else ci))
    fig = _figure(6.4, 4.2)
    ax = fig.subplots()
    colours: dict[tuple[str, str], str] = {}
    for (protocol, init, mode), points in sorted(lines.items()):
        points.sort()
        fracs, means, cis = (np.array(v) for v in zip(*points))
        suffix = f" [{protocol}]" if len(protocols) > 1 else ""
        style = "--" if protocol == _IMAGE_LEVEL and len(protocols) > 1 else "-"
        if mode == REFERENCE_MODE:  # a baseline to beat: grey, no band
            ax.plot(fracs, means, style, marker="s", color="0.45", label=f"{init}{suffix}", linewidth=1)
            continue
        colour = colours.setdefault((init, mode), f"C{len(colours) % 10}")
        ax.plot(fracs, means, style, marker="o", color=colour, label=arm_label(init, mode) + suffix)
        # scores live in [0, 1]; a few-seed t interval can reach beyond, which means nothing
        ax.fill_between(fracs, np.clip(means - cis, 0, 1), np.clip(means + cis, 0, 1), color=colour, alpha=0.18,
                        linewidth=0)
    for protocol in protocols:
        chance = max((_number(r.get(f"chance_{metric}")) for r in rows if str(r.get("protocol")) == protocol),
                     default=float("nan"))
        if not math.isnan(chance):
            ax.axhline(chance, color="0.3", linestyle=":", linewidth=1,
                       label="chance" + (f" [{protocol}]" if len(protocols) > 1 else ""))
    ax.set_xscale("log")
    all_fracs = sorted({f for points in lines.values() for f, _, _ in points})
    if all_fracs:
        ax.set_xticks(all_fracs, labels=[f"{100 * f:g}%" for f in all_fracs])
        ax.minorticks_off()
    ax.set_ylim(0, 1.0)
    ax.set_xlabel("label fraction (log scale)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"{metric.replace('_', ' ')} vs labels (mean, 95% CI over seeds)", fontsize=10)
    ax.grid(True, alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no completed runs", ha="center", va="center", transform=ax.transAxes)
    return fig


def gradcam_grid_figure(images: np.ndarray, cams_by_arm: Mapping[str, np.ndarray], true: Sequence[int] | None,
                        pred_by_arm: Mapping[str, Sequence[int]], classes: Sequence[str],
                        title: str | None = None, masks: np.ndarray | None = None) -> Figure:
    """One row per image: the image, then each arm's CAM over it, titled true / predicted label.

    ``masks`` (bool [N,H,W], e.g. the phantoms' atrophy masks) are drawn as a green contour on every panel.

    Args:
        images: float [N,H,W] (or [N,1,H,W]) in [0,1] (``gradcam.display_image``).
        cams_by_arm: arm name -> CAMs [N,H,W] in [0,1].
        true: true class index per image [N], or None when unknown (no true/wrong marking).
        pred_by_arm: arm name -> predicted class index per image [N] (red title when wrong).
        classes: class names.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 4:
        images = images[:, 0]
    arms = list(cams_by_arm)
    rows, cols = len(images), 1 + len(arms)
    fig = _figure(2.1 * cols, 2.2 * max(rows, 1) + (0.4 if title else 0))
    axes = np.asarray(fig.subplots(max(rows, 1), cols, squeeze=False))
    for i in range(rows):
        axes[i, 0].imshow(images[i], cmap="gray", vmin=0, vmax=1)
        if true is not None:
            axes[i, 0].set_title(f"true: {classes[int(true[i])]}", fontsize=8)
        for j, arm in enumerate(arms, start=1):
            predicted = int(pred_by_arm[arm][i])
            axes[i, j].imshow(images[i], cmap="gray", vmin=0, vmax=1)
            axes[i, j].imshow(np.asarray(cams_by_arm[arm][i]), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[i, j].set_title(f"{arm}\npred: {classes[predicted]}", fontsize=8,
                                 color="red" if true is not None and predicted != int(true[i]) else "black")
        if masks is not None and np.asarray(masks[i]).any():
            for j in range(cols):
                axes[i, j].contour(np.asarray(masks[i], dtype=np.float32), levels=[0.5], colors="lime",
                                   linewidths=0.6)
    for ax in axes.flat:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def pretrain_curve_figure(records: Sequence[dict]) -> Figure:
    """SimCLR loss per epoch, and the kNN monitor's balanced accuracy where it was measured."""
    fig = _figure(9, 3.4)
    loss_ax, knn_ax = fig.subplots(1, 2)
    trained = [r for r in records if "loss" in r]  # epoch 0 holds only the kNN of the initialisation
    loss_ax.plot([r["epoch"] for r in trained], [r["loss"] for r in trained], marker=".")
    loss_ax.set(xlabel="epoch", ylabel="NT-Xent loss", title="pretraining loss")
    knn = [(r["epoch"], r["knn_balanced_accuracy"], r.get("knn_accuracy")) for r in records if "knn_balanced_accuracy" in r]
    if knn:
        knn_ax.plot([k[0] for k in knn], [k[1] for k in knn], marker="o", label="balanced accuracy")
        knn_ax.plot([k[0] for k in knn], [k[2] for k in knn], marker="x", label="accuracy")
        knn_ax.legend(loc="lower right")
    knn_ax.set(xlabel="epoch", ylabel="kNN on validation", title="kNN monitor (frozen features)", ylim=(0, 1))
    return fig


def curves_figure(curves: Mapping[str, Sequence[tuple[int, float]]], xlabel: str, ylabel: str,
                  title: str) -> Figure:
    """One line of (epoch, value) points per named curve."""
    fig = _figure(6.5, 3.8)
    ax = fig.subplots()
    for name, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if any(curves.values()):
        ax.legend(fontsize=8)
    return fig


def reliability_figure(bins_by_name: Mapping[str, Mapping[str, Sequence[float]]], title: str) -> Figure:
    """Reliability diagram: accuracy against mean confidence per confidence bin (clinical.reliability_bins),
    one line per name, marker area by bin count; the diagonal is perfect calibration."""
    fig = _figure(4.8, 4.4)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    for name, bins in bins_by_name.items():
        if bins["count"]:
            sizes = 8 + 120 * np.asarray(bins["count"]) / max(bins["count"])
            line = ax.plot(bins["confidence"], bins["accuracy"], marker="", label=name)[0]
            ax.scatter(bins["confidence"], bins["accuracy"], s=sizes, color=line.get_color(), alpha=0.7)
    ax.set(xlabel="confidence (top-class probability)", ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left")
    return fig


def png_bytes(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def percent_labels(frac: Any) -> str:
    """0.1 -> '10%' (as the tables and titles show label fractions)."""
    try:
        return f"{100 * float(frac):g}%"
    except (TypeError, ValueError):
        return str(frac)


def log_run_figures(writer, metrics: dict, model: torch.nn.Module, arch: str, inputs: torch.Tensor,
                    targets: Sequence[int], classes: Sequence[str], true: Sequence[int] | None = None,
                    step: int | None = None, layer: str = "auto") -> None:
    """Add the test confusion matrix and a Grad-CAM grid (at backbone stage ``layer``) to a TensorBoard SummaryWriter.

    ``inputs`` are normalised test images [B,1,H,W] (at most 16 are drawn); ``targets``
    are the classes whose CAM is drawn (usually the predictions); ``true`` (optional)
    labels the rows with the true class and marks errors. A Grad-CAM failure is logged
    as text and warned about, never raised: it must not fail a finished run.
    """
    title = (f"{metrics.get('init')}+{metrics.get('mode')}, {percent_labels(metrics.get('label_frac'))} labels, "
             f"seed {metrics.get('seed')}: test confusion")
    writer.add_figure("test/confusion_matrix", confusion_figure(metrics["confusion_matrix"], classes, title),
                      global_step=step)
    try:
        shown = slice(0, min(16, len(inputs)))
        inputs, targets = inputs[shown], [int(t) for t in list(targets)[shown]]
        cams = gradcam.compute_cams(model, arch, inputs, targets, layer)
        arm = f"{metrics.get('init')}+{metrics.get('mode')}"
        grid = gradcam_grid_figure(gradcam.display_image(inputs), {arm: cams},
                                         None if true is None else list(true)[shown], {arm: targets}, classes)
        writer.add_image("test/gradcam", figure_to_rgb(grid), global_step=step, dataformats="HWC")
    except Exception as err:  # noqa: BLE001
        writer.add_text("test/gradcam_error", f"{type(err).__name__}: {err}", global_step=step)
        warnings.warn(f"Grad-CAM figure not logged: {type(err).__name__}: {err}", stacklevel=2)
    writer.flush()
