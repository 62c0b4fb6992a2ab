"""Probe: 95 % intervals for one-seed runs, by resampling test subjects (a cluster bootstrap).

    python scripts/probes/subject_bootstrap.py OUT.json RUN_DIR [RUN_DIR ...]

Each RUN_DIR holds a predictions.csv (path, group, true, pred, ...) of the same test split; the
first is the reference arm. Slices of one subject are near-duplicates, so resampling slices
would understate the spread: this draws test subjects with replacement, keeps all their
slices, and recomputes slice-level balanced accuracy (over the classes present in the draw)
for every run and the paired difference of every run against the first on the same draw.
Writes the point estimates, the 2.5/97.5 percentiles and the share of draws with a positive
difference. Until the report bootstraps over subjects itself (issue 20), this is how
results/alzheimer_recipe puts an interval on its single-seed numbers.
"""
import csv
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import balanced_accuracy_score

DRAWS, SEED = 2000, 0
# a draw without some class predicted by a run is expected; balanced accuracy averages over true classes
warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")


def read(run: Path) -> dict[str, tuple[str, str, str]]:
    with open(run / "predictions.csv", newline="") as f:
        return {row["path"]: (row["group"], row["true"], row["pred"]) for row in csv.DictReader(f)}


def balanced(true: np.ndarray, pred: np.ndarray) -> float:
    return float(balanced_accuracy_score(true, pred))


out, runs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
tables = [read(r) for r in runs]
paths = sorted(tables[0])
if any(sorted(t) != paths for t in tables[1:]):
    sys.exit("the runs were tested on different images")
groups = np.array([tables[0][p][0] for p in paths])
true = np.array([tables[0][p][1] for p in paths])
preds = [np.array([t[p][2] for p in paths]) for t in tables]
subjects = np.unique(groups)
members = [np.flatnonzero(groups == s) for s in subjects]
rng = np.random.default_rng(SEED)
scores = np.empty((DRAWS, len(runs)))
for d in range(DRAWS):
    rows = np.concatenate([members[i] for i in rng.integers(0, len(subjects), len(subjects))])
    scores[d] = [balanced(true[rows], p[rows]) for p in preds]
result = {"draws": DRAWS, "seed": SEED, "n_test_images": len(paths), "n_test_subjects": int(len(subjects)),
          "runs": []}
for j, run in enumerate(runs):
    entry = {"run": str(run), "balanced_accuracy": balanced(true, preds[j]),
             "ci95": [float(np.percentile(scores[:, j], 2.5)), float(np.percentile(scores[:, j], 97.5))]}
    if j:
        diff = scores[:, j] - scores[:, 0]
        entry["minus_first"] = {"point": entry["balanced_accuracy"] - result["runs"][0]["balanced_accuracy"],
                                "ci95": [float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))],
                                "share_positive": float((diff > 0).mean())}
    result["runs"].append(entry)
out.write_text(json.dumps(result, indent=2) + "\n")
for entry in result["runs"]:
    lo, hi = entry["ci95"]
    extra = ""
    if "minus_first" in entry:
        m = entry["minus_first"]
        extra = f"  minus first {100 * m['point']:+.1f} [{100 * m['ci95'][0]:+.1f}, {100 * m['ci95'][1]:+.1f}]"
    print(f"{entry['run']}: {100 * entry['balanced_accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]{extra}")
