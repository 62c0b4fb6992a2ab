"""Inference and metrics: embeddings, class probabilities, kNN monitor, slice and subject metrics."""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

from simclr_ad import augment, clinical
from simclr_ad.runtime import Runtime


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block; its train/eval mode is restored after, even on an error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def outputs_of(fn, model: torch.nn.Module, images: torch.Tensor, size: int | None, rt: Runtime | None,
               batch_size: int) -> torch.Tensor:
    """``fn(x)`` in fp32 on the CPU for batches of ``images``, with ``model`` in eval mode and no grad.

    ``images`` are uint8 [N,1,H,W], resized to ``size`` and normalised as in evaluation; with
    ``size`` None they are model inputs already (normalised float [N,1,H,W]). ``rt`` gives device,
    memory format and autocast; None runs in fp32 on the model's device.
    """
    outputs = []
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            if rt is None:
                outputs.append(fn(chunk.to(device, torch.float32)).float().cpu())
                continue
            x = rt.to_input(augment.prepare(chunk.to(rt.device), size) if size is not None else chunk)
            with rt.autocast():
                outputs.append(fn(x).float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)


def embed(backbone: torch.nn.Module, images: torch.Tensor, size: int, rt: Runtime,
          batch_size: int = 256) -> torch.Tensor:
    """L2-normalised backbone features [N, D] of uint8 images [N,1,H,W] (eval mode, no grad)."""
    return F.normalize(outputs_of(lambda x: backbone(x).flatten(1), backbone, images, size, rt, batch_size), dim=1)


def predict_proba(model: torch.nn.Module, images: torch.Tensor, size: int | None, rt: Runtime | None,
                  batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities [N, C] and logits [N, C] of a classifier (eval mode, no grad).

    ``size``/``rt`` as in ``outputs_of``: uint8 images at ``size`` under ``rt``, or (both None)
    normalised inputs in fp32 on the model's device.
    """
    logits = outputs_of(model, model, images, size, rt, batch_size)
    if logits.numel() == 0:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return logits.softmax(dim=1).numpy(), logits.numpy()


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor, size: int, rt: Runtime,
                          batch_size: int = 256) -> None:
    """Set every BatchNorm's running mean and variance to their average over ``images`` (uint8 [N,1,H,W],
    prepared as in evaluation, unaugmented): "precise BN", by torch.optim.swa_utils.update_bn.

    The running averages trail the weights by ~1/momentum steps; a fine-tune of a few steps per epoch
    is evaluated with statistics of weights long gone (a SimCLR encoder's, from augmented views).
    Only evaluation reads them: training in train mode uses batch statistics and is unchanged.
    """
    chunks = np.array_split(np.arange(len(images)), max(1, -(-len(images) // batch_size)))  # none of size 1
    inputs = (rt.to_input(augment.prepare(images[torch.from_numpy(c)].to(rt.device), size)) for c in chunks)
    with rt.autocast():
        torch.optim.swa_utils.update_bn(inputs, model)


def knn_monitor(backbone: torch.nn.Module, bank_images: torch.Tensor, bank_labels: np.ndarray,
                query_images: torch.Tensor, query_labels: np.ndarray, num_classes: int, size: int,
                rt: Runtime, k: int = 20, temperature: float = 0.1) -> dict[str, float]:
    """Weighted kNN (lightly's knn_predict) on frozen features: accuracy and balanced accuracy."""
    # imported here: lightly.utils.benchmarking imports pytorch_lightning, ~1.5-3 s at every start of
    # every stage that imports this module, for the one function only pretraining's monitor calls
    from lightly.utils.benchmarking import knn_predict

    bank = embed(backbone, bank_images, size, rt)
    query = embed(backbone, query_images, size, rt)
    ranked = knn_predict(query, bank.T.contiguous(), torch.as_tensor(bank_labels), num_classes,
                         knn_k=min(k, len(bank)), knn_t=temperature)
    metrics = classification_metrics(query_labels, ranked[:, 0].numpy(), [str(c) for c in range(num_classes)])
    return {"knn_accuracy": metrics["accuracy"], "knn_balanced_accuracy": metrics["balanced_accuracy"]}


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class P/R/F1 and the confusion matrix (rows = true)."""
    labels = list(range(len(classes)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    present = np.unique(y_true)
    with warnings.catch_warnings():  # a split without the rare class is expected, not news
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # balanced accuracy and macro-F1 over the classes present in y_true, as sklearn does
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "n": int(len(y_true)),
    }


def chance_levels(confusion: Sequence[Sequence[int]]) -> dict[str, float]:
    """What the best constant prediction scores on a test split with this confusion matrix (rows = true).

    Only the classes present (non-empty rows) count, as in ``classification_metrics``: with k of
    them, balanced accuracy is 1/k whatever the constant; accuracy is the largest class share p;
    macro-F1 is that class's F1, 2p/(1+p), over k (the other present classes score 0).
    """
    support = np.asarray(confusion, dtype=np.float64).sum(axis=1)
    present = support[support > 0]
    if len(present) == 0:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "macro_f1": float("nan")}
    share = float(present.max() / present.sum())
    return {"accuracy": share, "balanced_accuracy": 1.0 / len(present),
            "macro_f1": 2 * share / (1 + share) / len(present)}


def subject_level(probabilities: np.ndarray, y_true: np.ndarray, groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Average slice probabilities per subject; returns (subject true labels, subject predictions).

    A subject's label is its slices' majority label (they agree for real subjects).
    """
    _, truth, aggregated = clinical.subject_probabilities(probabilities, y_true, groups, "mean")
    return truth, aggregated.argmax(axis=1)
