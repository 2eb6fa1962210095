"""benchmarks/sampling_parity.py: which records it reads, and its Welch interval against scipy's."""

from __future__ import annotations

import json

import pytest
from scipy import stats

import benchmarks.sampling_parity as sp


def test_welch_interval_matches_scipy():
    a, b = [1.65, 1.77, 1.84], [1.70, 1.95, 1.81, 1.90]
    diff, low, high = sp.welch(a, b)
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(sum(b) / 4 - sum(a) / 3)
    assert (low, high) == pytest.approx((ci.low, ci.high))


def test_the_row_and_a_tag_read_their_own_seeds_only(tmp_path, monkeypatch):
    monkeypatch.setattr(sp, "RESULTS", tmp_path)
    for stem, seed in (("", 0), ("_seed1", 1), ("_wbatch", 0), ("_wbatch_seed2", 2), ("_other", 0)):
        (tmp_path / f"lenet300_mnist_gnj_blind200{stem}.json").write_text(json.dumps({"seed": seed, "s": stem}))
    assert [r["s"] for r in sp.published("lenet300", "gnj", 200, "")] == ["", "_seed1"]
    assert [r["s"] for r in sp.published("lenet300", "gnj", 200, "wbatch")] == ["_wbatch", "_wbatch_seed2"]
