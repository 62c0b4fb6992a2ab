import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from simclr_ad import camstudy, checkpoint, data, plots, report
from simclr_ad.config import FinetuneConfig, config_to_dict, write_config
from simclr_ad.data import scan
from simclr_ad.models import build_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")


CLASSES = ["Mild_Demented", "Non_Demented", "Very_Mild_Demented"]
T_975_2 = 4.302653  # t_{0.975, 2}


def make_run(root: Path, protocol: str, init: str, frac: float, seed: int, bal: float | None,
             mode: str = "finetune", subject: bool = False, **cfg_keys) -> Path:
    """A run dir as finetune writes it; bal=None leaves it without metrics.json (incomplete)."""
    run_dir = root / protocol / f"{init}-{mode}" / f"frac{frac:g}" / f"seed{seed}"
    cfg = FinetuneConfig(init=init, mode=mode, label_frac=frac, seed=seed, arch="resnet18", image_size=32,
                         epochs=3, group_by="image" if protocol == "image" else "default", **cfg_keys)
    run_dir.mkdir(parents=True)
    write_config(cfg, run_dir / "config.yaml")
    if bal is None:
        return run_dir
    metrics = {"accuracy": bal + 0.1, "balanced_accuracy": bal, "macro_f1": bal - 0.1,
               "confusion_matrix": [[2, 1, 0], [0, 3, 0], [1, 0, 2]], "classes": CLASSES, "label_frac": frac,
               "n_train": 10, "init": init, "mode": mode, "arch": "resnet18", "seed": seed, "best_epoch": 2,
               "wall_s": 1.0, "task": "multiclass", "group_by": protocol, "image_size": 32, "epochs": 3,
               "pretrain_on": "train" if init == "simclr" else None, "git_sha": "abc123",
               "data": "synthetic", "per_class": {}}
    if subject:
        metrics.update({"subject_accuracy": bal + 0.05, "subject_balanced_accuracy": bal + 0.02,
                        "subject_macro_f1": bal, "subject_confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]})
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    return run_dir


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for seed, bal in enumerate([0.5, 0.6, 0.7]):
        make_run(root, "subject", "simclr", 0.1, seed, bal, subject=True)
        make_run(root, "subject", "random", 0.1, seed, [0.4, 0.45, 0.5][seed], subject=True)
    make_run(root, "subject", "simclr", 1.0, 0, 0.9, subject=True)  # one seed: no CI
    make_run(root, "image", "simclr", 0.1, 0, 0.9)
    make_run(root, "image", "simclr", 0.1, 1, 0.92)
    make_run(root, "subject", "random", 1.0, 0, None)  # never finished
    (make_run(root, "subject", "random", 1.0, 1, None) / "last.pt").write_bytes(b"x")  # interrupted
    bad = make_run(root, "subject", "random", 1.0, 2, 0.8)
    (bad / "metrics.json").write_text("{not json")
    (root / "pretrain").mkdir()
    (root / "pretrain" / "config.yaml").write_text("arch: resnet18\npretrain_on: all\n")  # not a fine-tune run
    return root


def read_summary(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def test_mean_std_ci95_known_cases():
    mean, std, ci = report.mean_std_ci95([0.5, 0.6, 0.7])
    assert (mean, std) == pytest.approx((0.6, 0.1))
    assert ci == pytest.approx(T_975_2 * 0.1 / math.sqrt(3), rel=1e-6)
    assert report.mean_std_ci95([0.8]) == (0.8, 0.0, None)


def test_report_tables_csv_and_missing_runs(runs, tmp_path):
    out = tmp_path / "report"
    report.main(["--runs", str(runs), "--out", str(out), "--no-gradcam"])

    columns, rows = read_summary(out / "summary.csv")
    assert columns[:5] == ["protocol", "init", "mode", "label_frac", "n_seeds"]
    for metric in ("accuracy", "balanced_accuracy", "macro_f1", "subject_accuracy",
                   "subject_balanced_accuracy", "subject_macro_f1"):
        own = [c for c in columns if c.startswith(metric + "_")]
        assert own == [f"{metric}_mean", f"{metric}_std", f"{metric}_ci95"]
    cell = {(r["protocol"], r["init"], r["mode"], r["label_frac"]): r for r in rows}
    assert len(rows) == 4 and cell[("subject", "simclr", "finetune", "0.1")]["n_seeds"] == "3"
    simclr = cell[("subject", "simclr", "finetune", "0.1")]
    assert float(simclr["balanced_accuracy_mean"]) == pytest.approx(0.6)
    assert float(simclr["balanced_accuracy_std"]) == pytest.approx(0.1)
    assert float(simclr["balanced_accuracy_ci95"]) == pytest.approx(T_975_2 * 0.1 / math.sqrt(3), rel=1e-6)
    assert float(simclr["accuracy_mean"]) == pytest.approx(0.7)
    assert float(simclr["subject_balanced_accuracy_mean"]) == pytest.approx(0.62)
    random = cell[("subject", "random", "finetune", "0.1")]
    assert float(random["balanced_accuracy_mean"]) == pytest.approx(0.45)
    single = cell[("subject", "simclr", "finetune", "1.0")]
    assert (single["n_seeds"], single["balanced_accuracy_std"], single["balanced_accuracy_ci95"]) == ("1", "0.0", "")
    image = cell[("image", "simclr", "finetune", "0.1")]
    assert float(image["balanced_accuracy_mean"]) == pytest.approx(0.91)
    assert image["subject_balanced_accuracy_mean"] == ""  # no groups at image level

    md = (out / "report.md").read_text()
    assert "| 10% (10 slices) | 60.0 ± 24.8 | 45.0 ± 12.4 | 62.0 ± 24.8 | 47.0 ± 12.4 |" in md  # slice, then subject
    assert "| 100% (10 slices) | 90.0 (1 seed) | – | 92.0 (1 seed) | – |" in md
    assert "+31.0" in md  # image-level 91.0 minus subject-level 60.0, simclr at 10%
    assert "git_sha" in md and "abc123" in md and "synthetic" in md
    missing = md.split("## Missing or partial runs", 1)[1]
    for seed in (0, 1, 2):
        assert str(runs / "subject" / "random-finetune" / "frac1" / f"seed{seed}") in missing
    assert "interrupted" in missing and "metrics.json unreadable" in missing and "pretrain" not in missing

    for name in ("label_efficiency.png", "val_curves.png", "confusion_simclr_0.1_subject.png", "confusion_random_0.1_subject.png",
                 "confusion_simclr_0.1_image.png", "report.html"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2 + 4 and "src='confusion" not in page


def test_validation_curves_take_each_protocols_largest_fraction_lowest_seed(tmp_path):
    root = tmp_path / "runs"
    for seed in (1, 0):
        run = make_run(root, "subject", "random", 1.0, seed, 0.4)
        (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0, "val_balanced_accuracy": v + seed})
                                                   + "\n" for e, v in ((1, 0.5), (2, 0.4))))
    make_run(root, "subject", "random", 0.1, 0, 0.3)  # a smaller fraction: not drawn
    (make_run(root, "image", "simclr", 0.5, 0, 0.6) / "metrics.jsonl").write_text(
        '{"epoch": 1, "val_balanced_accuracy": 0.6}\n{"epoch": 1, "test_balanced_accuracy": 0.7}\n')
    curves = report.validation_curves(report.find_runs([root]))
    assert curves == {"random+finetune, group_by=subject, 100% labels": [(1, 0.5), (2, 0.4)],
                      "simclr+finetune, group_by=image, 50% labels": [(1, 0.6)]}
    fig = plots.curves_figure(curves, "epoch", "bal. acc.", "t")
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_legend() is not None


def test_gradcam_failure_is_noted_not_fatal(tmp_path):
    root = tmp_path / "runs"
    for init in ("simclr", "random"):
        (make_run(root, "subject", init, 0.1, 0, 0.5) / "best.pt").write_bytes(b"truncated")
    out = tmp_path / "report"
    report.main(["--runs", str(root), "--out", str(out)])
    md = (out / "report.md").read_text()
    assert "Grad-CAM at 10% labels failed" in md
    assert (out / "summary.csv").is_file() and (out / "report.html").is_file()


def test_no_runs_is_one_clear_error(tmp_path):
    with pytest.raises(report.ReportError, match="no fine-tune runs"):
        report.main(["--runs", str(tmp_path), "--out", str(tmp_path / "out"), "--no-gradcam"])
    with pytest.raises(report.ReportError, match="not found"):
        report.main(["--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])


def test_gradcam_study_on_real_checkpoints(class_folders, tmp_path):
    """Two tiny resnet18 'runs' on a 3-class folder set: same images for both arms, a grid, scores."""
    root = tmp_path / "runs"
    found = scan(class_folders)
    torch.manual_seed(0)
    for init in ("simclr", "random"):
        run_dir = make_run(root, "subject", init, 0.5, 0, 0.5, data_dir=str(class_folders))
        model = build_classifier("resnet18", len(found.classes))
        checkpoint.save(checkpoint.make(model, None, None, 1, 1, 0.5, config_to_dict(FinetuneConfig()), "resnet18",
                                        {"classes": found.classes, "image_size": 32, "task": "multiclass"}),
                        run_dir / "best.pt")
        lines = ["path,group,true,pred," + ",".join(f"p_{c}" for c in found.classes)]
        lines += [f"{p},{p},{found.classes[y]},{found.classes[0]},1,0,0" for p, y in zip(found.paths, found.labels)]
        (run_dir / "predictions.csv").write_text("\n".join(lines) + "\n")
    study = camstudy.gradcam_study(report.find_runs([root]), per_class=1)
    assert study.notes == []
    assert [r["arm"] for r in study.rows] == ["simclr+finetune", "random+finetune"]
    assert all(r["n_images"] == 3 and math.isfinite(r["road_combined"]) for r in study.rows)
    assert list(study.figures) == ["gradcam_0.5.png"] and study.figures["gradcam_0.5.png"][:4] == b"\x89PNG"


def test_gradcam_localisation_scores_more_images_than_the_grid_shows(tmp_path):
    """Phantoms have masks: the grid (and faithfulness) shows per_class images per class, localisation
    averages over scored_per_class of them (the 8-image score of results/demo was noise)."""
    root, keys = tmp_path / "runs", {"synth_n": 64, "synth_slices": 4, "cache_dir": str(tmp_path / "cache")}
    images = data.load_dataset(FinetuneConfig(image_size=32, progress=False, **keys))
    torch.manual_seed(0)
    for init in ("simclr", "random"):
        run_dir = make_run(root, "subject", init, 0.5, 0, 0.5, **keys)
        model = build_classifier("resnet18", len(images.classes))
        checkpoint.save(checkpoint.make(model, None, None, 1, 1, 0.5, config_to_dict(FinetuneConfig()), "resnet18",
                                        {"classes": images.classes, "image_size": 32, "task": "multiclass"}),
                        run_dir / "best.pt")
        lines = ["path,group,true,pred," + ",".join(f"p_{c}" for c in images.classes)]
        lines += [f"{p},{p},{images.classes[y]},{images.classes[0]}," + ",".join(["0.25"] * len(images.classes))
                  for p, y in zip(images.paths, images.labels)]
        (run_dir / "predictions.csv").write_text("\n".join(lines) + "\n")
    study = camstudy.gradcam_study(report.find_runs([root]), per_class=1, scored_per_class=4)
    assert study.notes == []
    n_classes = len(images.classes)
    assert all(r["n_images"] == n_classes for r in study.rows)
    assert all(n_classes < r["n_masks"] <= 4 * n_classes for r in study.rows)
    assert all(0 < r["localisation_chance"] < 1 for r in study.rows)


def test_resized_masks_takes_the_datasets_layout():
    """Regression: the dataset stores masks as [N,1,S,S]; the Grad-CAM grids of results/demo failed on it."""
    masks = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    masks[0, 0, :8, :8] = True
    resized = camstudy._resized_masks(masks, 8)
    assert resized.shape == (2, 8, 8) and resized[0, :4, :4].all() and resized.sum() == 16
    assert (camstudy._resized_masks(masks[:, 0], 8) == resized).all()


def test_select_images_is_deterministic_per_class():
    rows = [{"path": f"p{i}", "true": CLASSES[i % 3]} for i in range(9)]
    assert camstudy.select_images(rows, CLASSES, 2) == ["p0", "p3", "p1", "p4", "p2", "p5"]
    assert camstudy.select_images(rows, CLASSES, 1, allowed={"p3", "p4", "p8"}) == ["p3", "p4", "p8"]


def test_plots_draw_their_inputs():
    fig = plots.confusion_figure([[3, 1], [0, 0]], ["a", "b"], "t")
    assert len(fig.axes) == 4  # two panels and their colour bars
    assert fig.axes[0].get_xticklabels()[1].get_text() == "b"
    rows = [{"protocol": "subject", "init": "simclr", "mode": "finetune", "label_frac": f,
             "balanced_accuracy_mean": m, "balanced_accuracy_ci95": c}
            for f, m, c in ((0.01, 0.3, 0.05), (0.1, 0.5, ""), (1.0, 0.8, 0.02))]
    curve = plots.label_efficiency_figure(rows)
    assert curve.axes[0].get_xscale() == "log" and len(curve.axes[0].lines) == 1
    grid = plots.gradcam_grid_figure(np.zeros((2, 8, 8)), {"x": np.ones((2, 8, 8))}, [0, 1], {"x": [0, 0]}, ["a", "b"])
    assert len(grid.axes) == 4 and grid.axes[3].title.get_color() == "red"  # wrong prediction in red
    assert plots.figure_to_rgb(grid).shape[2] == 3


def test_log_run_figures_writes_tensorboard_images(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    model = build_classifier("resnet18", 3)
    metrics = {"confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]], "init": "random", "mode": "finetune",
               "label_frac": 1.0, "seed": 0}
    writer = SummaryWriter(str(tmp_path / "tb"))
    plots.log_run_figures(writer, metrics, model, "resnet18", torch.randn(3, 1, 32, 32), [0, 1, 2], CLASSES)
    writer.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    assert set(events.Tags()["images"]) == {"test/confusion_matrix", "test/gradcam"}


def test_run_records_pretrain_curve_and_run_md(runs, tmp_path):
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "config.yaml").write_text("arch: resnet18\n")
    (pre / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "loss": 5 - e, "knn_accuracy": 0.3 + e / 10,
                                                           "knn_balanced_accuracy": 0.25 + e / 10}) + "\n"
                                               for e in (1, 2, 3)))
    stages = tmp_path / "stages.tsv"
    stages.write_text("pretrain\tdone\t3600\tabc1234\tpython -m simclr_ad.pretrain --config configs/cpu.yaml\n"
                      "finetune-subject_split\tfailed\t60\tabc1234\tpython -m simclr_ad.finetune --sweep\n"
                      "finetune-fold0\tdone\t120\tdef5678\tavx512_bf16\tpython -m simclr_ad.finetune --sweep\n")
    out = report.main(["--runs", str(runs), "--out", str(tmp_path / "rep"), "--no-gradcam", "--copy-runs",
                       "--pretrain", str(pre), "--stages", str(stages)])
    copied = sorted(p.relative_to(out / "runs").as_posix() for p in (out / "runs").rglob("metrics.json"))
    assert "subject/simclr-finetune/frac0.1/seed0/metrics.json" in copied
    assert not list((out / "runs").rglob("*.pt"))
    assert (out / "pretrain_curve.png").is_file() and (out / "pretrain" / "metrics.jsonl").is_file()
    assert "pretrain_curve.png" in (out / "report.md").read_text()
    run_md = (out / "RUN.md").read_text()
    assert "| pretrain | done | 60.0 min | abc1234 | – | `python -m simclr_ad.pretrain --config configs/cpu.yaml` |" in run_md
    assert "| finetune-fold0 | done | 2.0 min | def5678 | avx512_bf16 | `python -m simclr_ad.finetune --sweep` |" in run_md
    assert "Total wall time of the logged sittings: 1.05 h" in run_md


def test_pretrain_only_report(tmp_path):
    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "loss": 5.0}) + "\n")
    out = report.main(["--pretrain", str(pre), "--out", str(tmp_path / "rep")])
    assert (out / "pretrain_curve.png").is_file() and (out / "pretrain" / "metrics.jsonl").is_file()
    with pytest.raises(report.ReportError, match="give --runs"):
        report.main(["--out", str(tmp_path / "rep2")])


def make_variant(root: Path, name: str, pretrain: dict | None, test_bal: list[float], val_bal: list[float]) -> None:
    """An ablation variant dir: pretrain/ (config + kNN log) unless pretrain is None, and finetune/ runs."""
    from simclr_ad.config import PretrainConfig

    if pretrain is not None:
        (root / name / "pretrain").mkdir(parents=True)
        write_config(PretrainConfig(arch="resnet18", out=str(root / name / "pretrain"), **pretrain),
                     root / name / "pretrain" / "config.yaml")
        log = [{"epoch": 0, "knn_balanced_accuracy": 0.40}] + [
            {"epoch": e, "loss": 5.0 - e, "epoch_s": 60.0, "knn_balanced_accuracy": 0.40 + 0.05 * e} for e in (1, 2)]
        (root / name / "pretrain" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    init = "random" if pretrain is None else "simclr"
    for seed, (bal, val) in enumerate(zip(test_bal, val_bal)):
        run = make_run(root / name / "finetune", "subject", init, 0.1, seed, bal, subject=True)
        metrics = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**metrics, "val_balanced_accuracy": val}))


def test_ablation_report_compares_variants_on_val_and_test(tmp_path):
    root = tmp_path / "investigation"
    make_variant(root, "random", None, [0.3, 0.3, 0.3], [0.35, 0.35, 0.35])
    make_variant(root, "temp0.2", {"temperature": 0.2}, [0.5, 0.5, 0.5], [0.45, 0.45, 0.45])
    make_variant(root, "base", {}, [0.5, 0.6, 0.7], [0.4, 0.5, 0.6])
    out = tmp_path / "rep"
    report.main(["--ablation", str(root), "--out", str(out)])

    text = (out / "ablation.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    pretraining = {r.split(" | ")[0][2:]: r for r in rows if r.count("|") == 9}
    assert "| – | 2 | 3.000 | 40.0 | 50.0 | 50.0 (epoch 2) | 2.0 |" in pretraining["base"]
    assert "| temperature=0.2 |" in pretraining["temp0.2"]  # the run dir ('out') is no knob
    finetuning = [r for r in rows if "+finetune" in r]
    assert [r.split(" | ")[0][2:] for r in finetuning] == ["base", "temp0.2", "random"]  # base first, baseline last
    ci = T_975_2 * 0.1 / math.sqrt(3) * 100
    assert finetuning[0].startswith(f"| base | simclr+finetune | 50.0 ± {ci:.1f} | 60.0 ± {ci:.1f} | 62.0 ± {ci:.1f} |")
    assert "| random | random+finetune | 35.0 ± 0.0 | 30.0 ± 0.0 |" in finetuning[2]
    assert (out / "ablation_knn.png").stat().st_size > 1000
    assert (out / "base" / "pretrain" / "metrics.jsonl").is_file()
    assert (out / "base" / "finetune" / "subject" / "simclr-finetune" / "frac0.1" / "seed2" / "metrics.json").is_file()
    assert not list(out.rglob("*.pt"))


def test_ablation_of_an_empty_dir_is_one_clear_error(tmp_path):
    (tmp_path / "empty" / "nothing").mkdir(parents=True)
    with pytest.raises(report.ReportError, match="no variants"):
        report.main(["--ablation", str(tmp_path / "empty"), "--out", str(tmp_path / "rep")])


def test_cell_mixing_encoders_or_archs_is_warned(tmp_path):
    root = tmp_path / "runs"
    for seed, sha in enumerate(["aaa", "aaa", "bbb"]):
        run = make_run(root, "subject", "simclr", 0.1, seed, 0.5)
        metrics = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**metrics, "encoder_sha256": sha}))
    notes = report.consistency_warnings(report.find_runs([root]))
    assert notes == ["simclr+finetune at 10% labels (subject) mixes encoder_sha256 = aaa, bbb"]


def test_cell_mixing_label_units_or_folds_with_a_single_split_is_warned(tmp_path):
    root = tmp_path / "runs"
    for seed, extra in enumerate([{"label_unit": "subject", "fold": 0, "n_folds": 5},
                                  {"label_unit": "subject", "fold": 1, "n_folds": 5},
                                  {"label_unit": "slice"}]):
        run = make_run(root, "subject", "simclr", 0.1, seed, 0.5)
        metrics = json.loads((run / "metrics.json").read_text())
        (run / "metrics.json").write_text(json.dumps({**metrics, **extra}))
    notes = report.consistency_warnings(report.find_runs([root]))
    assert notes == ["simclr+finetune at 10% labels (subject) mixes label_unit = slice, subject",
                     "simclr+finetune at 10% labels (subject) mixes n_folds = 5, None",
                     "simclr+finetune at 10% labels (subject) mixes single-split runs with k-fold runs: "
                     "their test subjects overlap"]


def test_an_absolute_subject_budget_is_its_own_cell_not_the_full_one(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "subject", "simclr", 1.0, 0, 0.9)
    run = make_run(root, "subject5", "simclr", 1.0, 0, 0.5, label_unit="subject", label_subjects=5)
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "group_by": "subject", "label_subjects": 5}))
    rows = report.summarise(report.find_runs([root]))
    assert sorted((r["protocol"], r["n_seeds"]) for r in rows) == [("subject", 1), ("subject, 5 subj./class", 1)]
    assert [r["protocol"] for r in report.plot_rows(rows)] == ["subject"]  # no fraction to plot it at
    assert report.consistency_warnings(report.find_runs([root])) == []


def test_a_report_inside_its_runs_dir_never_counts_its_own_copies(runs):
    """Issue 18 #8: `report --runs D --out D/report --copy-runs`, twice."""
    args = ["--runs", str(runs), "--out", str(runs / "report"), "--no-gradcam", "--copy-runs"]
    report.main(args)
    first = (runs / "report" / "summary.csv").read_bytes()
    assert (runs / "report" / "runs" / "subject" / "simclr-finetune" / "frac0.1" / "seed0" / "metrics.json").is_file()
    report.main(args)
    assert (runs / "report" / "summary.csv").read_bytes() == first
    _, rows = read_summary(runs / "report" / "summary.csv")
    one_seed = next(r for r in rows if (r["protocol"], r["init"], r["label_frac"]) == ("subject", "simclr", "1.0"))
    assert one_seed["n_seeds"] == "1" and one_seed["balanced_accuracy_ci95"] == ""
    found = report.find_runs([runs])
    assert len(found) == len({r.path for r in found}) == 12  # 9 complete, 3 not
    assert not any("report" in r.path.parts for r in found)  # the originals are kept


def test_localisation_ratio_to_chance_by_hand():
    assert report._ratio(0.3, 0.1) == pytest.approx(3.0)
    assert report._ratio(0.05, 0.2) == pytest.approx(0.25)
    for value, chance in ((0.3, 0.0), (None, 0.1), (0.3, None), (float("nan"), 0.1)):
        assert math.isnan(report._ratio(value, chance))
