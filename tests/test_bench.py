"""The benchmark runs end to end (its speed targets are checked by running it, not by tests)."""
import json
from pathlib import Path

import pytest
import torch

from simclr_ad import bench

KEYS = {"reference_img_per_s", "ours_img_per_s", "speedup", "aug_views_per_s", "peak_rss_mb", "gemm_peak_gflops",
        "achieved_gflops", "mfu", "arch", "image_size", "batch_size", "optimizer"}


@pytest.mark.slow
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


def _tiny_args(**changes):
    import argparse

    values = dict(arch="resnet18", image_size=32, batch_size=8, ref_workers=0, small_map_gemm=True, data_dir=None,
                  stage="simclr", optimizer="sam", sam_every=1, steps=2, rounds=1)
    return argparse.Namespace(**{**values, **changes})


def test_finetune_loops_step_and_the_reference_reads_the_png_files_it_wrote(one_torch_thread):
    args = _tiny_args(stage="finetune", optimizer="adamw")
    images = bench._load_dataset(args)
    reference, ours = bench.bench_reference.finetune_loop(args, images), bench._ours_finetune(args, images)
    folder = Path(reference["tmp"].name)
    files = sorted(folder.rglob("*.png"))
    assert len(files) == 4 * args.batch_size and {f.parent.name for f in files} <= set(images.classes)
    assert len({f.parent.name for f in files}) > 1  # a spread over the classes, not the first one only
    assert "/work/shared" not in str(folder)
    samples = reference["aug"]()  # ImageFolder + transforms: 3-channel float tensors with their labels
    assert samples[0][0].shape == (3, 32, 32) and isinstance(samples[0][1], int)
    for loop in (reference, ours):
        loop["start"]()
        loop["full"]()
        loop["stop"]()
        loop["net"]()
        loop["close"]()
    info = ours["info"]()
    assert info["pass_flops"] > 0 and info["train_dtype"] in ("float32", "bfloat16")


def test_result_counts_looksam_cycles_and_records_the_host_class():
    args = _tiny_args(sam_every=3)
    timings = {name: {"full": [1.5, 1.5], "net": [1.2], "aug": [0.1]} for name in bench.LOOPS}
    info = {"pass_flops": 1e9, "gemm_peak": 100.0, "threads": 2, "train_dtype": "float32"}
    result = bench._result(args, timings, {"ours": 1.0, "reference": 2.0, "reference_same_allocator": 2.0},
                           info, ["--sam-every", "3"])
    assert result["ours_img_per_s"] == pytest.approx(8 * 3 / 1.5)  # a unit is one 3-step cycle
    assert result["step_gflop"] == pytest.approx(4 / 3)  # 4 passes per cycle: one step takes two
    assert result["mfu"] == pytest.approx(4 / 1.5 / 100)
    assert result["steps_timed"] == 6 and result["sam_every"] == 3
    assert result["host_class"] in bench.runtime.HOST_CLASSES and set(result["cpu_flags"]) <= set(bench.runtime.ISA_FLAGS)


def _row(**changes):
    row = {"arch": "resnet18", "image_size": 64, "batch_size": 128, "optimizer": "sgd", "reference_img_per_s": 20.0,
           "ours_img_per_s": 60.0, "speedup": 3.0, "aug_views_per_s": 5000.0, "aug_headroom": 40.0,
           "gemm_peak_gflops": 180.0, "achieved_gflops": 120.0, "mfu": 0.67, "peak_rss_mb": 1500.0,
           "reference_peak_rss_mb": 1600.0, "machine": "AMD EPYC, 2 threads", "train_dtype": "float32",
           "command": "python -m simclr_ad.bench --quick", "git_sha": "abc1234", "date": "2026-12-01",
           "host_class": "avx2", "cpu_model": "AMD EPYC", "cpu_flags": ["avx2", "fma"], "stage": "simclr",
           "sam_every": 1}
    return {**row, **changes}


def test_summarize_gives_each_host_class_its_own_block_and_never_a_ratio_across_them(tmp_path):
    (tmp_path / "avx2").mkdir()
    (tmp_path / "avx512_bf16").mkdir()
    (tmp_path / "ablation").mkdir()
    (tmp_path / "avx2" / "sgd.json").write_text(json.dumps(_row()))
    (tmp_path / "avx2" / "looksam.json").write_text(json.dumps(_row(optimizer="sam", sam_every=5, ours_img_per_s=50.0)))
    (tmp_path / "avx2" / "ft.json").write_text(json.dumps(_row(stage="finetune", optimizer="adamw")))
    (tmp_path / "avx512_bf16" / "sam.json").write_text(json.dumps(_row(
        host_class="avx512_bf16", optimizer="sam", ours_img_per_s=30.0, train_dtype="bfloat16")))
    (tmp_path / "ablation" / "x.json").write_text(json.dumps(_row(arch="resnet50")))
    bench.main(["--summarize", str(tmp_path)])
    text = (tmp_path / "README.md").read_text()
    bf16, avx2 = text.split("## Host class `avx512_bf16`")[1].split("## Host class `avx2`")  # fastest class first
    assert "resnet50" not in text  # ablation/ is not read
    assert "| resnet18 @ 64, 128, LookSAM k=5 |" in avx2 and "| 1.20x (met: <= 1.3x) |" in avx2
    assert "| resnet18 @ 64, 128, SGD | 20.0 | 60.0 | 3.00x |" in avx2  # no speedup target on AVX2
    assert "| 0.67 (not met: 0.8) |" in avx2 and "| resnet18 @ 64, 128, fine-tune AdamW |" in avx2
    assert "CPU: AMD EPYC; flags avx2 fma" in avx2
    (sam_row,) = [line for line in bf16.splitlines() if line.startswith("| resnet18 @ 64, 128, SAM |")]
    assert sam_row.startswith("| resnet18 @ 64, 128, SAM | 20.0 | 30.0 | 3.00x (met: 2.5x)")
    assert sam_row.endswith("| - |")  # the only SGD row is of another class: no cost ratio


def test_conv_profile_names_the_convolutions_and_their_speed(one_torch_thread):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    x = torch.randn(4, 1, 16, 16)

    def step():
        model(x).sum().backward()

    text = bench.conv_profile(step, steps=1)
    assert "aten::convolution_backward" in text and "GFLOP/s" in text
    assert "4x8x14x14 8x8x3x3" in text  # the second convolution, by input and weight shape


def test_host_class_flag(capsys):
    assert bench.main(["--host-class"])["host_class"] == capsys.readouterr().out.strip()
