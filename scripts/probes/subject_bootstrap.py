"""Probe: 95 % intervals for one-seed runs, by resampling test subjects (a cluster bootstrap).

    python scripts/probes/subject_bootstrap.py OUT.json RUN_DIR [RUN_DIR ...]

Each RUN_DIR holds a predictions.csv of the same test split; the first is the reference arm.
A thin caller of the package: the draws are simclr_ad.stats.subject_draws (test subjects with
replacement, all their slices), the statistic slice-level balanced accuracy of the most probable
class, the difference to the first run simclr_ad.stats.paired_bootstrap on the same draws. The
report does the same for every arm pair (simclr_ad/comparison.py); this stays for
results/alzheimer_recipe, whose numbers it made (2000 draws, seed 0).
"""
import json
import sys
from pathlib import Path

import numpy as np

from simclr_ad.clinical import balanced_accuracy
from simclr_ad.comparison import read_predictions
from simclr_ad.stats import bootstrap, paired_bootstrap, subject_draws

DRAWS, SEED = 2000, 0

out, runs = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
tables = []
for run in runs:
    paths, groups, true, probabilities, _ = read_predictions(run / "predictions.csv")
    order = np.argsort(paths)
    tables.append((np.asarray(paths)[order], np.asarray(groups)[order], true[order], probabilities[order].argmax(1)))
if any(list(t[0]) != list(tables[0][0]) for t in tables[1:]):
    sys.exit("the runs were tested on different images")
_, groups, true, _ = tables[0]
draws = subject_draws(groups, DRAWS, SEED)


def score(pred):
    return lambda rows: balanced_accuracy(true[rows], pred[rows])


result = {"draws": DRAWS, "seed": SEED, "n_test_images": len(true), "n_test_subjects": len(set(groups.tolist())),
          "runs": []}
for j, (run, table) in enumerate(zip(runs, tables)):
    one = bootstrap(score(table[3]), len(true), draws)
    entry = {"run": str(run), "balanced_accuracy": one["point"], "ci95": one["ci95"]}
    if j:
        diff = paired_bootstrap(score(table[3]), score(tables[0][3]), len(true), draws)
        entry["minus_first"] = {k: diff[k] for k in ("point", "ci95", "share_positive")}
    result["runs"].append(entry)
out.write_text(json.dumps(result, indent=2) + "\n")
for entry in result["runs"]:
    lo, hi = entry["ci95"]
    extra = ""
    if "minus_first" in entry:
        m = entry["minus_first"]
        extra = f"  minus first {100 * m['point']:+.1f} [{100 * m['ci95'][0]:+.1f}, {100 * m['ci95'][1]:+.1f}]"
    print(f"{entry['run']}: {100 * entry['balanced_accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]{extra}")
