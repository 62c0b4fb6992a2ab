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
