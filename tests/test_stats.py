"""The cluster bootstrap over test subjects, plain and paired."""
import numpy as np
import pytest

from simclr_ad import stats
from simclr_ad.clinical import balanced_accuracy


def test_draws_resample_whole_subjects():
    clusters = ["a", "a", "b", "b", "b", "c"]
    for rows in stats.subject_draws(clusters, draws=50, seed=1):
        drawn = [clusters[k] for k in rows]
        for name in set(drawn):  # a subject drawn m times brings all its slices m times
            assert drawn.count(name) % clusters.count(name) == 0
        assert len({clusters[k] for k in rows}) <= 3


def test_stratified_draws_keep_every_class_and_its_subject_count():
    clusters = ["a", "a", "b", "c", "c", "d", "e"]
    strata = [0, 0, 0, 1, 1, 1, 2]  # class 0: a, b; class 1: c, d; class 2: e (one subject)
    subject_class = {"a": 0, "b": 0, "c": 1, "d": 1, "e": 2}
    seen = set()
    for rows in stats.subject_draws(clusters, draws=100, seed=3, strata=strata):
        starts = [k for k in rows if k == 0 or clusters[k - 1] != clusters[k]]  # one per drawn subject
        drawn = [clusters[k] for k in starts]
        assert sorted(subject_class[c] for c in drawn) == [0, 0, 1, 1, 2]
        seen.add(tuple(sorted(drawn)))
    assert len(seen) > 1  # still a resample, not the identity
    plain = stats.subject_draws(clusters, draws=100, seed=3)
    assert any(2 not in {strata[k] for k in rows} for rows in plain)  # unstratified loses the rare class
    mixed = stats.subject_draws(["a", "a", "a", "b"], draws=30, seed=0, strata=[1, 0, 0, 1])  # a: majority 0
    assert all(sorted(rows.tolist()) == [0, 1, 2, 3] for rows in mixed)  # one subject per stratum: always both


def test_paired_bootstrap_of_identical_arms_is_zero_width():
    rng = np.random.default_rng(0)
    clusters = np.repeat(np.arange(12), 4).astype(str)
    true, pred = rng.integers(0, 2, 48), rng.integers(0, 2, 48)
    score = lambda rows: balanced_accuracy(true[rows], pred[rows])  # noqa: E731
    result = stats.paired_bootstrap(score, score, len(true), stats.subject_draws(clusters, 200))
    assert result["point"] == 0 and result["ci95"] == [0.0, 0.0] and result["share_positive"] == 0.0


def test_paired_bootstrap_sees_a_better_arm_and_plain_ci_brackets_the_point():
    clusters = np.repeat(np.arange(20), 3).astype(str)
    true = np.tile([0, 1, 1], 20)
    good, bad = true.copy(), true.copy()
    bad[::4] = 1 - bad[::4]
    draws = stats.subject_draws(clusters, 300, seed=2)
    a, b = (lambda rows: balanced_accuracy(true[rows], good[rows])), (lambda rows: balanced_accuracy(true[rows], bad[rows]))
    diff = stats.paired_bootstrap(a, b, len(true), draws)
    assert diff["point"] > 0 and 0 < diff["ci95"][0] <= diff["point"] <= diff["ci95"][1]
    assert diff["share_positive"] == 1.0
    plain = stats.bootstrap(b, len(true), draws)
    assert plain["ci95"][0] < plain["point"] < plain["ci95"][1]
    assert stats.percentile_ci([float("nan")]) == pytest.approx((float("nan"),) * 2, nan_ok=True)
