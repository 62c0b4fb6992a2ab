"""Probe: how clear and how compact the phantoms' grade signal is, with no network.

    python scripts/probes/phantom_signal.py

On tests/test_phantom.py's `graded` set (80 subjects x 16 slices at 48 px, seed 1), prints the two numbers
that file asserts bounds on: the localisation over chance of the best 6x6 map (each atrophy mask averaged
over 6x6 cells and upsampled as grad-cam does), and the balanced accuracy of one number per slice (the dark
share of the head's core) with thresholds fitted on even subjects and scored on odd ones.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
import test_phantom  # noqa: E402  (its helpers are the definitions being measured)

from simclr_ad.phantom import CLASSES, PHANTOM_VERSION, generate  # noqa: E402

graded = generate(1280, seed=1, size=48, slices_per_subject=16)
dark = np.array([test_phantom._dark_fraction(image) for image in graded.images])
number = np.array([int(name[4:]) for name in graded.subjects])
fit, held, labels = number % 2 == 0, number % 2 == 1, graded.labels
thresholds = [max(np.unique(dark[fit]), key=lambda t: (dark[fit & (labels == g)] < t).mean()
                  + (dark[fit & (labels == g + 1)] >= t).mean()) for g in range(len(CLASSES) - 1)]
predicted = (dark[held][:, None] >= np.array(thresholds)[None]).sum(axis=1)
recall = [float(np.mean(predicted[labels[held] == g] == g)) for g in range(len(CLASSES))]
print(f"phantoms v{PHANTOM_VERSION}: ideal 6x6 map {test_phantom._pooled_map_ratio(graded.masks, 6):.2f}x chance; "
      f"dark-core balanced accuracy {np.mean(recall):.3f} (recall per grade {[round(r, 2) for r in recall]})")
