"""Leakage-safe splits: grouping recovers subjects, groups never cross, fractions nest, audit finds leaks."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from simclr_ad import data, data_cli, folds, grouping, phantom, phantom_files, splits
from simclr_ad.data import DataError, ImageSet
from simclr_ad.errors import UserError


def phantom_images(n: int, seed: int, with_subjects: bool = True) -> tuple[ImageSet, list[str]]:
    """Decoded in-memory phantoms (32 px) and their true subject per image."""
    made = phantom.generate(n, seed=seed, size=32)
    paths = [f"{phantom.CLASSES[y]}/{s}_s{k:02d}.png"
             for y, s, k in zip(made.labels, made.subjects, made.slice_index)]
    images = ImageSet(root=Path("/phantoms"), layout="synthetic", classes=list(phantom.CLASSES), paths=paths,
                      labels=made.labels.astype(np.int64), subjects=list(made.subjects) if with_subjects else None,
                      images=torch.from_numpy(made.images).unsqueeze(1))
    return images, list(made.subjects)


@pytest.fixture(scope="module")
def ph():
    """40 subjects x 32 slices; the rare class has 64 images in 2 subjects, as in the Kaggle set."""
    return phantom_images(1280, seed=0)


@pytest.fixture(scope="module")
def ph_splits(ph):
    images, _ = ph
    return {mode: splits.make_splits(images, mode) for mode in ("subject", "auto", "image")}


def split_of(s: dict) -> dict[str, str]:
    return {p: name for name in splits.SPLITS for p in s[name]}


# --------------------------------------------------------------------------- grouping

def test_auto_groups_recover_phantom_subjects(ph):
    images, subjects = ph
    groups = grouping.infer_groups(images)
    assert adjusted_rand_score(subjects, groups) > 0.9
    for g in np.unique(groups):  # groups never mix classes
        assert len(set(images.labels[groups == g])) == 1


def test_label_free_groups_use_known_subjects_else_ignore_labels(ph):
    images, subjects = ph
    known = grouping.label_free_groups(dataclasses.replace(images, subjects=subjects))
    assert adjusted_rand_score(subjects, known) == 1.0 and known.dtype == np.int64
    blind = grouping.label_free_groups(images)  # no subject ids: inferred, labels never read
    scrambled = np.random.default_rng(0).permutation(images.labels)
    assert np.array_equal(blind, grouping.label_free_groups(dataclasses.replace(images, labels=scrambled)))
    assert adjusted_rand_score(subjects, blind) > 0.9


def test_auto_groups_recover_short_subjects():
    images, subjects = phantom_images(320, seed=3)  # few, small subjects: a harder case for the statistics
    assert adjusted_rand_score(subjects, grouping.infer_groups(images)) > 0.9


def test_default_uses_known_subjects_else_auto(ph):
    images, _ = ph
    assert splits.make_splits(images)["group_by"] == "subject"
    anonymous, _ = phantom_images(320, seed=1, with_subjects=False)
    assert splits.make_splits(anonymous)["group_by"] == "auto"
    with pytest.raises(DataError, match="subject ids"):
        splits.make_splits(anonymous, "subject")


# --------------------------------------------------------------------------- the split itself

@pytest.mark.parametrize("mode", ["subject", "auto", "image"])
def test_no_group_crosses_splits_and_every_image_is_placed(ph, ph_splits, mode):
    images, subjects = ph
    s = ph_splits[mode]
    where = split_of(s)
    assert sorted(where) == sorted(images.paths)
    assert sum(len(s[name]) for name in splits.SPLITS) == len(images)
    by_group: dict[str, set] = {}
    for path, group in s["groups"].items():
        by_group.setdefault(group, set()).add(where[path])
    assert all(len(v) == 1 for v in by_group.values())
    if mode != "image":  # the true subjects do not leak either
        by_subject: dict[str, set] = {}
        for path, subject in zip(images.paths, subjects):
            by_subject.setdefault(subject, set()).add(where[path])
        assert all(len(v) == 1 for v in by_subject.values())


@pytest.mark.parametrize("mode", ["subject", "auto", "image"])
def test_stratified_with_rare_class(ph, ph_splits, mode):
    images, _ = ph
    s = ph_splits[mode]
    for name in s["classes"]:
        n_groups = len({g for p, g in s["groups"].items() if p.startswith(name + "/")})
        present = [split for split in splits.SPLITS if s["counts"][split][name] > 0]
        if n_groups >= 3:
            assert present == list(splits.SPLITS), name
        else:
            assert present[:2] == ["train", "test"], name  # 2 groups: one to train, one to test
    # shares follow the requested fractions for the big classes
    total = len(images)
    assert abs(len(s["test"]) / total - 0.2) < 0.06 and abs(len(s["val"]) / total - 0.1) < 0.06
    assert s["counts"]["train"]["Moderate_Demented"] >= 32 and s["counts"]["test"]["Moderate_Demented"] >= 1


@pytest.mark.parametrize("mode", ["subject", "auto"])
def test_fractions_nested_stratified_min_one_per_class(ph_splits, mode):
    s = ph_splits[mode]
    assert set(s["fractions"]) == {"0.01", "0.1", "0.2", "0.5", "1.0"}
    ordered = [set(s["fractions"][k]) for k in ("0.01", "0.1", "0.2", "0.5", "1.0")]
    assert all(a <= b for a, b in zip(ordered, ordered[1:]))
    assert ordered[-1] == set(s["train"])
    for key, paths in s["fractions"].items():
        for name in s["classes"]:
            n_class = s["counts"]["train"][name]
            taken = sum(1 for p in paths if p.startswith(name + "/"))
            assert taken == max(1, math.ceil(round(float(key) * n_class, 9)))
            assert taken >= 1


def test_label_subset_any_fraction_nests_with_stored(ph_splits):
    s = ph_splits["subject"]
    assert splits.label_subset(s, 0.1) == s["fractions"]["0.1"]
    assert splits.label_subset(s, 1) == s["train"]
    middle = set(splits.label_subset(s, 0.3))
    assert set(s["fractions"]["0.2"]) <= middle <= set(s["fractions"]["0.5"])
    assert splits.label_subset(s, 0.3) == splits.label_subset(s, 0.3)
    smallest = len(s["classes"]) / len(s["train"])  # one image per class on average
    tiny = splits.label_subset(s, smallest)
    assert sorted({p.split("/")[0] for p in tiny}) == sorted(s["classes"])  # every class, >= 1 image
    with pytest.raises(UserError, match="fewer than one image per class"):
        splits.label_subset(s, smallest * 0.9)
    for bad in (0, -0.1, 1.5, float("nan"), "abc"):
        with pytest.raises(UserError, match="label fraction"):
            splits.label_subset(s, bad)


def test_label_subset_names_a_class_without_training_images(ph_splits):
    s = dict(ph_splits["subject"])
    s["train_rank"] = {**s["train_rank"], "Moderate_Demented": []}
    with pytest.raises(UserError, match="0.2.*Moderate_Demented"):
        splits.label_subset(s, 0.2)


def test_subject_budget_names_a_class_without_training_images(ph_splits):
    s = dict(ph_splits["subject"])
    s["train_rank"] = {**s["train_rank"], "Moderate_Demented": []}
    for fraction, per_class in ((0.1, 0), (0.3, 0), (1.0, 2)):  # 0.1 is stored, 0.3 drawn from the ranking
        with pytest.raises(UserError, match="no image of Moderate_Demented"):
            splits.label_subset(s, fraction, "subject", per_class)


def test_same_seed_same_bytes_other_seed_other_split(ph, tmp_path):
    images, _ = ph
    first, second, third = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    splits.write_splits(splits.make_splits(images, "auto", seed=0), first)
    splits.write_splits(splits.make_splits(images, "auto", seed=0), second)
    splits.write_splits(splits.make_splits(images, "auto", seed=1), third)
    assert first.read_bytes() == second.read_bytes()
    assert json.loads(first.read_text())["test"] != json.loads(third.read_text())["test"]
    assert splits.read_splits(first) == splits.make_splits(images, "auto", seed=0)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


# --------------------------------------------------------------------------- audit

def planted_images(n_bases: int = 120, seed: int = 0) -> tuple[ImageSet, int]:
    """Independent smooth random images, half of them with a slightly noisy twin (same subject)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (n_bases, 1, 8, 8)).astype(np.float32))
    bases = torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    noise = rng.normal(0, 2.0, (n_bases // 2, 1, 32, 32)).astype(np.float32)
    twins = bases[: n_bases // 2] + torch.from_numpy(noise)
    pixels = torch.cat([bases, twins]).clamp(0, 255).round().to(torch.uint8)
    labels = np.array([k % 2 for k in range(n_bases)] + [k % 2 for k in range(n_bases // 2)], dtype=np.int64)
    subjects = [f"s{k:03d}" for k in range(n_bases)] + [f"s{k:03d}" for k in range(n_bases // 2)]
    paths = [f"{'ab'[y]}/{s}_{i}.png" for i, (y, s) in enumerate(zip(labels, subjects))]
    return ImageSet(root=Path("/planted"), layout="manifest", classes=["a", "b"], paths=paths, labels=labels,
                    subjects=subjects, images=pixels), n_bases // 2


def test_audit_finds_planted_twins_across_image_split_and_none_across_subject_split():
    images, n_twins = planted_images()
    naive = splits.make_splits(images, "image", seed=0)
    where = split_of(naive)
    first = len(images) - n_twins  # twin k is image first + k
    crossing = sum(where[images.paths[k]] != where[images.paths[first + k]] for k in range(n_twins))
    report = splits.audit(images, naive)
    assert crossing > 0
    assert report["near_duplicate_pairs"] == n_twins  # exactly the planted pairs, no stranger
    assert report["cross_split_pairs"] == crossing == sum(report["pairs_by_splits"].values())
    assert report["examples"] and report["examples"][0]["cosine"] > 0.99
    assert splits.audit(images, splits.make_splits(images, "subject"))["cross_split_pairs"] == 0
    auto = splits.make_splits(images, "auto")
    assert splits.audit(images, auto)["cross_split_pairs"] == 0
    assert auto["group_stats"]["n_groups"] == len(images) - n_twins  # twins grouped, strangers alone
    weak = splits.audit(images, auto)["weakest_link"]  # each twin pair holds by its own near-identity
    assert weak["n_groups"] == len(images) - n_twins and weak["unconnected"] == 0
    assert weak["min"] > 0.99 and weak["below_0.8"] == 0 and len(weak["per_group"]) == weak["n_groups"]


def test_audit_on_phantoms_many_for_image_split_none_for_auto(ph, ph_splits, tmp_path):
    images, _ = ph
    naive = splits.audit(images, ph_splits["image"], max_examples=3)
    assert naive["cross_split_pairs"] > 300 and naive["share_with_train_twin"]["test"] > 0.5
    assert len(naive["examples"]) == 3
    assert splits.audit(images, ph_splits["auto"])["cross_split_pairs"] == 0
    out = tmp_path / "montage.png"
    data_cli.save_montage(images, naive, out)
    assert Image.open(out).size[0] > 100


# --------------------------------------------------------------------------- files, stages, CLI

def test_read_splits_errors_are_one_clear_line(ph_splits, tmp_path):
    with pytest.raises(DataError, match="not found"):
        splits.read_splits(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        splits.read_splits(tmp_path / "bad.json")
    (tmp_path / "partial.json").write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(DataError, match="lacks key"):
        splits.read_splits(tmp_path / "partial.json")
    overlapping = dict(ph_splits["subject"], val=ph_splits["subject"]["val"] + ph_splits["subject"]["test"][:1])
    (tmp_path / "overlap.json").write_text(json.dumps(overlapping))
    with pytest.raises(DataError, match="both val and test"):
        splits.read_splits(tmp_path / "overlap.json")
    for path in ("bad.json", "partial.json", "overlap.json"):
        with pytest.raises(DataError) as err:
            splits.read_splits(tmp_path / path)
        assert "\n" not in str(err.value)


def test_splits_for_reads_the_file_or_computes_the_same_split(ph, tmp_path):
    images, _ = ph
    cfg = SimpleNamespace(splits=None, group_by="default", val_frac=0.1, test_frac=0.2, split_seed=0)
    computed = splits.splits_for(cfg, images)
    assert computed == splits.make_splits(images)
    splits.write_splits(computed, tmp_path / "splits.json")
    cfg.splits = str(tmp_path / "splits.json")
    assert splits.splits_for(cfg, images) == computed
    other, _ = phantom_images(320, seed=5)
    other.paths = [p.replace(".png", ".jpg") for p in other.paths]
    with pytest.raises(DataError, match="not in the dataset"):
        splits.splits_for(cfg, other)


def test_presplit_layout_is_honoured_and_val_carved_from_train(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 4)):
        for name in ("Mild_Demented", "Non_Demented"):
            for k in range(count):
                arr = rng.integers(0, 255, (24, 24), dtype=np.uint8)
                (tmp_path / "ds" / split / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr, "L").save(tmp_path / "ds" / split / name / f"{k}.png")
    images = data.decode(data.scan(tmp_path / "ds"), 32, tmp_path / "cache")
    s = splits.make_splits(images, "image", val_frac=0.25, test_frac=0.2)
    given = dict(zip(images.paths, images.presplit))
    assert all(given[p] == "test" for p in s["test"]) and len(s["test"]) == 8
    assert all(given[p] == "train" for p in s["val"]) and len(s["val"]) == 8  # 0.25 of all 32, per class
    assert s["counts"]["val"] == {"Mild_Demented": 4, "Non_Demented": 4}


def test_cli_split_and_audit(tmp_path, capsys):
    root = phantom_files.write_dataset(tmp_path / "ph", n=320, seed=0, size=32)
    common = ["--data-dir", str(root), "--image-size", "32", "--cache-dir", str(tmp_path / "cache")]
    for mode in ("auto", "image"):
        out = tmp_path / f"{mode}.json"
        data_cli.main(["split", *common, "--out", str(out), "--group-by", mode])
        printed = capsys.readouterr().out
        assert "train" in printed and "Moderate_Demented" in printed and f"group_by {mode}" in printed
        data_cli.main(["audit", *common, "--splits", str(out), "--json", "--montage", str(tmp_path / f"{mode}.png")])
        report = json.loads(capsys.readouterr().out)
        assert (report["cross_split_pairs"] == 0) == (mode == "auto")
        assert (tmp_path / f"{mode}.png").is_file()
    auto = splits.read_splits(tmp_path / "auto.json")
    assert auto["group_stats"]["n_groups"] == 10  # 10 phantom subjects of 32 slices
    data_cli.main(["audit", *common, "--splits", str(tmp_path / "auto.json")])
    assert "weakest link inside a group (cosine): min" in capsys.readouterr().out
    data_cli.main(["split", *common, "--out", str(tmp_path / "subject.json")])
    assert splits.read_splits(tmp_path / "subject.json")["group_by"] == "subject"  # manifest has subject ids
    with pytest.raises(DataError, match="--data-dir"):
        data_cli.main(["split", "--out", str(tmp_path / "x.json")])
    with pytest.raises(DataError, match="--out"):
        data_cli.main(["split", *common])


# --------------------------------------------------------------------------- subject budgets (issue 20)

def _subjects_of(s: dict, paths) -> set:
    return {s["groups"][p] for p in paths}


def test_subject_budgets_nest_stratify_and_keep_whole_subjects(ph_splits):
    s = ph_splits["subject"]
    label_of = {g: name for name, ranked in splits.subject_rank(s).items() for g in ranked}
    previous: set = set()
    for fraction in (0.01, 0.1, 0.2, 0.5, 1.0):
        paths = splits.label_subset(s, fraction, "subject")
        chosen = _subjects_of(s, paths)
        assert previous <= chosen  # nested
        previous = chosen
        assert set(paths) == {p for p in s["train"] if s["groups"][p] in chosen}  # all slices of a chosen subject
        for name, ranked in splits.subject_rank(s).items():  # stratified: ceil(f x n), >= 1 per class with any
            mine = [g for g in chosen if label_of[g] == name]
            assert len(mine) == max(1, math.ceil(round(fraction * len(ranked), 9)))
    assert previous == _subjects_of(s, s["train"])
    assert splits.labelled_subjects(s, 0.1) == sorted(s["subject_fractions"]["0.1"])  # stored in the file


def test_subject_budgets_are_seeded_and_absolute_budgets_count_per_class(ph):
    images, _ = ph
    a, b = splits.make_splits(images, "subject", seed=0), splits.make_splits(images, "subject", seed=0)
    assert a["train_subject_rank"] == b["train_subject_rank"]
    other = splits.make_splits(images, "subject", seed=0)
    other_seed = splits.make_splits(images, "subject", seed=5)
    assert other["train_subject_rank"] != other_seed["train_subject_rank"]
    two = splits.labelled_subjects(a, 1.0, per_class=2)
    ranks = splits.subject_rank(a)
    assert sorted(two) == sorted(g for ranked in ranks.values() for g in ranked[:2])
    assert set(splits.labelled_subjects(a, 1.0, per_class=1)) <= set(two)


def test_old_split_files_without_subject_lists_still_load_with_a_derived_ranking(ph_splits, tmp_path):
    s = {k: v for k, v in ph_splits["subject"].items() if k not in ("train_subject_rank", "subject_fractions")}
    splits.write_splits(s, tmp_path / "old.json")
    old = splits.read_splits(tmp_path / "old.json")
    derived = splits.subject_rank(old)
    for name, ranked in derived.items():  # each subject once, in the order its first image appears in train_rank
        firsts = [s["groups"][p] for p in old["train_rank"][name]]
        assert ranked == list(dict.fromkeys(firsts))
    assert sorted(g for r in derived.values() for g in r) == sorted(_subjects_of(old, old["train"]))
    assert splits.label_subset(old, 0.1, "slice") == ph_splits["subject"]["fractions"]["0.1"]  # slices: unchanged
    assert splits.resolve_label_unit("auto", "image") == "slice" and splits.resolve_label_unit("auto", "auto") == "subject"


def test_cli_split_reads_shared_keys_through_the_stage_config(tmp_path, capsys):
    root = phantom_files.write_dataset(tmp_path / "ph", n=320, seed=0, size=32)
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("image_size: 32\nval_frac: 0.2\nfinetune:\n  epochs: 1\n")
    data_cli.main(["split", "--config", str(yaml_file), "--data-dir", str(root), "--cache-dir", str(tmp_path / "c"),
                   "--out", str(tmp_path / "a.json"), "--seed", "3"])  # --seed: the older name of --split-seed
    made = splits.read_splits(tmp_path / "a.json")
    assert made["seed"] == 3 and made["val_frac"] == 0.2
    with pytest.raises(UserError, match="group_by"):
        data_cli.main(["split", "--data-dir", str(root), "--out", str(tmp_path / "b.json"), "--group-by", "nope"])


def test_weakest_links_by_hand():
    """Group 0 is held by 0.99 (0-1) and 0.75 (1-2): its weakest link is 0.75, not the unused 0.70 (0-2);
    a repeated pair counts once; group 1 is one pair; group 2 is one image; group 3 is not connected."""
    from simclr_ad.grouping import weakest_links

    groups = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    i, j = np.array([0, 1, 0, 1, 3, 2]), np.array([1, 2, 2, 0, 4, 5])
    cos = np.array([0.99, 0.75, 0.70, 0.99, 0.95, 0.9])  # 2-5 crosses groups: ignored
    links = weakest_links(groups, i, j, cos)
    assert links[0] == pytest.approx(0.75) and links[1] == pytest.approx(0.95) and links[2] == 1.0
    assert math.isnan(links[3])


def test_folds_keeping_fragments_change_the_subjects_not_the_folds(ph):
    """--keep-fragments: every fold tests, validates and trains on the same images as the stitched auto
    folds, but the recorded subjects are the chain fragments, each inside one stitched group."""
    images, _ = ph
    plain, kept = folds.make_folds(images, 3, "auto"), folds.make_folds(images, 3, "auto", keep_fragments=True)
    for a, b in zip(plain, kept):
        assert (a["train"], a["val"], a["test"]) == (b["train"], b["val"], b["test"])
        assert all(b["groups"][p].startswith(a["groups"][p] + "f") for p in images.paths)
        assert b["fragments_kept"] and b["n_stitched_groups"] == len(set(a["groups"].values()))
    assert len(set(kept[0]["groups"].values())) > len(set(plain[0]["groups"].values()))  # these phantoms have some
    with pytest.raises(DataError, match="group_by auto"):
        folds.make_folds(images, 3, "subject", keep_fragments=True)
