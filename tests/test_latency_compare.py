"""benchmarks/latency_compare.py: committed compressed files timed head to head, by method or by result stem."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

STEMS = ["lenet300_mnist_gnj_blind200", "lenet300_mnist_turbo_blind30"]


def test_stems_compare_the_named_committed_files_and_write_apart(tmp_path, monkeypatch):
    from benchmarks import latency_compare
    from benchmarks._common import RESULTS

    for stem in STEMS:
        for suffix in (".json", ".bcz"):
            shutil.copy(RESULTS / f"{stem}{suffix}", tmp_path)
    monkeypatch.setattr(latency_compare, "RESULTS", tmp_path)
    monkeypatch.setattr(sys, "argv", ["latency_compare", "--model", "lenet300", "--rounds", "1", "--name", "blind",
                                      "--stems", *STEMS])
    latency_compare.main()
    record = json.loads((tmp_path / "latency_compare_lenet300_mnist_blind.json").read_text())
    assert record["methods"] == STEMS
    for stem in STEMS:
        committed = json.loads((RESULTS / f"{stem}.json").read_text())
        assert record["kept_architecture"][stem] == committed["kept_architecture"]
        assert record["test_error_pct"][stem] == committed["test_error_pct"]
        assert all(len(v) == 1 and v[0] > 0 for v in record["samples_ms"][stem].values())
    assert not (tmp_path / "latency_compare_lenet300_mnist.json").exists()  # the committed rows' file is untouched


def test_stems_without_a_name_are_refused(monkeypatch):
    from benchmarks import latency_compare

    monkeypatch.setattr(sys, "argv", ["latency_compare", "--stems", *STEMS])
    with pytest.raises(SystemExit, match="--name"):
        latency_compare.main()
