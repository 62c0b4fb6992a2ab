"""The benchmark runs end to end (its speed targets are checked by running it, not by tests)."""
import json

import pytest

from simclr_ad import bench

KEYS = {"reference_img_per_s", "ours_img_per_s", "speedup", "aug_views_per_s", "peak_rss_mb", "gemm_peak_gflops",
        "achieved_gflops", "mfu", "arch", "image_size", "batch_size", "optimizer"}


def test_bench_runs_two_steps_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench.main(["--arch", "resnet18", "--image-size", "32", "--batch-size", "8", "--steps", "2",
                         "--rounds", "1", "--warmup", "1", "--ref-workers", "0", "--optimizer", "sam",
                         "--json", str(out)])
    assert KEYS <= set(result)
    assert json.loads(out.read_text())["optimizer"] == "sam"
    assert result["ours_img_per_s"] > 0 and result["reference_img_per_s"] > 0 and 0 < result["mfu"] < 1.5
    assert result["speedup"] == pytest.approx(result["ours_img_per_s"] / result["reference_img_per_s"])


def test_summarize_writes_a_table_with_targets(tmp_path):
    row = {"arch": "resnet18", "image_size": 64, "batch_size": 128, "optimizer": "sam", "reference_img_per_s": 20.0,
           "ours_img_per_s": 60.0, "speedup": 3.0, "aug_views_per_s": 5000.0, "aug_headroom": 40.0,
           "gemm_peak_gflops": 600.0, "achieved_gflops": 300.0, "mfu": 0.5, "peak_rss_mb": 1500.0,
           "reference_peak_rss_mb": 1600.0, "machine": "x86_64, 2 threads", "train_dtype": "bfloat16",
           "command": "python -m simclr_ad.bench --quick", "git_sha": "abc1234", "date": "2026-11-22"}
    (tmp_path / "a.json").write_text(json.dumps(row))
    (tmp_path / "b.json").write_text(json.dumps(dict(row, arch="resnet50", image_size=128, speedup=2.0)))
    bench.main(["--summarize", str(tmp_path)])
    text = (tmp_path / "README.md").read_text()
    assert "\n\n| model @ input, batch, optimizer |" in text  # the table starts on a line of its own
    assert "| resnet18 @ 64, 128, SAM | 20.0 | 60.0 | 3.00x (met: 2.5x)" in text
    assert "2.00x (not met: 3.5x)" in text
    assert "`python -m simclr_ad.bench --quick`: 2026-11-22, commit abc1234" in text
    with pytest.raises(bench.UserError, match="no bench JSON"):
        bench.main(["--summarize", str(tmp_path / "empty")])
