"""The LookSAM check's table: kNN monitor per epoch and step throughput of each pretraining run.

    python scripts/probes/looksam_table.py results/looksam > results/looksam/README.md

Reads OUT/<run>/metrics.jsonl and OUT/stages.tsv (written by scripts/looksam_results.sh).
"""
import json
import sys
from pathlib import Path

import yaml

from simclr_ad import runtime


def main(out: Path) -> None:
    stages = {}
    for line in (out / "stages.tsv").read_text().splitlines():
        fields = line.split("\t", 5)  # scripts/stages.sh: 6 fields since the CPU class was logged, 5 before
        name, status, seconds, sha, command = fields[:4] + fields[-1:]
        stages[name] = (status, int(seconds), sha, command)
    print("# LookSAM against full SAM: SimCLR kNN monitor on the validation subjects\n")
    print(f"Host class {runtime.host_class()} ({runtime.cpu_model()}); made by `bash scripts/looksam_results.sh`.")
    print("kNN balanced accuracy (k = 20, cosine, temperature 0.1) on frozen features, epoch 0 = initialisation.\n")
    print("| run | sam_every | seed | kNN bal. acc. by epoch (%) | last | img/s | wall time | commit |")
    print("|---|---|---|---|---|---|---|---|")
    for run in sorted(p for p in out.iterdir() if (p / "metrics.jsonl").is_file()):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        knn = [100 * r["knn_balanced_accuracy"] for r in rows if "knn_balanced_accuracy" in r]
        speed = [r["img_per_s"] for r in rows if "img_per_s" in r]
        config = yaml.safe_load((run / "config.yaml").read_text())
        status, seconds, sha, _ = stages.get(run.name, ("?", 0, "?", ""))
        print(f"| {run.name} | {config.get('sam_every')} | {config.get('seed')} | {' / '.join(f'{v:.1f}' for v in knn)} "
              f"| {knn[-1]:.1f} | {sum(speed) / max(1, len(speed)):.1f} | {seconds / 60:.1f} min | {sha} |")
    print("\nCommands:\n")
    for name, (status, seconds, sha, command) in stages.items():
        print(f"- {name} ({status}, {seconds} s, {sha}): `{command}`")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
