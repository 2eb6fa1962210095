"""``benchmarks/retrain_convergence.py --reuse``: the shorter schedule's figures come from an earlier run's longer
schedule, only for matching epochs, data and seed; other schedules write their own result file."""

from __future__ import annotations

import argparse
import json

import pytest

from benchmarks import retrain_convergence as rc


def _earlier(tmp_path, data="mnist", seed=0):
    rows = [{"classes": [2, 4, 6], "long_epochs": 20, "long_test_error_pct": 0.5, "long_weights_kept": 2550,
             "long_val_error_pct": 0.27, "long_s": 725.0},
            {"classes": [0, 1], "long_epochs": 30, "long_test_error_pct": 0.9, "long_weights_kept": 9000,
             "long_val_error_pct": 0.4, "long_s": 800.0}]
    path = tmp_path / "earlier.json"
    path.write_text(json.dumps({"data": data, "seed": seed, "rows": rows}))
    return path


def _args(reuse, short=20, long=40, data="mnist", seed=0, index=None):
    return argparse.Namespace(reuse=None if reuse is None else str(reuse), data=data, seed=seed, short_epochs=short,
                              epochs=long, contexts=2, context_index=index)


def test_reuse_takes_only_rows_whose_longer_schedule_matches(tmp_path):
    reused = rc.reusable_rows(_args(_earlier(tmp_path)))
    assert list(reused) == [(2, 4, 6)]
    assert reused[(2, 4, 6)]["retrain_weights_kept"] == 2550
    assert reused[(2, 4, 6)]["retrain_val_error_pct"] == pytest.approx(0.27)
    assert reused[(2, 4, 6)]["reused_from"] == "earlier.json"
    assert rc.reusable_rows(_args(None)) == {}
    assert rc.reusable_rows(_args(_earlier(tmp_path), short=10)) == {}


@pytest.mark.parametrize("data,seed", [("fashion-mnist", 0), ("mnist", 1)])
def test_reuse_refuses_another_data_set_or_seed(tmp_path, data, seed):
    with pytest.raises(SystemExit, match="another data set or seed"):
        rc.reusable_rows(_args(_earlier(tmp_path, data=data, seed=seed)))


def test_other_schedules_write_their_own_file(tmp_path, monkeypatch):
    monkeypatch.setattr(rc, "RESULTS", tmp_path)
    row = {"classes": [2, 4, 6], "short_epochs": 20, "short_test_error_pct": 0.5, "short_weights_kept": 2550,
           "short_val_error_pct": 0.27, "short_s": 725.0, "short_reused_from": "earlier.json", "long_epochs": 40,
           "long_val_error_pct": 0.34, "long_test_error_pct": 0.44, "long_weights_kept": 2400, "long_s": 1384.0}
    rc.write(_args(None), [row], started=0.0)
    record = json.loads((tmp_path / "retrain_convergence_lenet5_mnist_20v40.json").read_text())
    assert record["converged"] is True  # 0.07 points worse, 6 % fewer weights: within the rule
    assert "reused from `earlier.json`" in (tmp_path / "retrain_convergence_lenet5_mnist_20v40.md").read_text()
    rc.write(_args(None, short=10, long=20), [dict(row, long_weights_kept=1000)], started=0.0)
    assert json.loads((tmp_path / "retrain_convergence_lenet5_mnist.json").read_text())["converged"] is False


def test_one_context_of_the_plan_writes_its_own_file(tmp_path, monkeypatch):
    """``--context-index``: one context per process, each in its own file, saying which one it holds."""
    monkeypatch.setattr(rc, "RESULTS", tmp_path)
    row = {"classes": [0, 1, 3, 4, 6], "short_epochs": 40, "short_test_error_pct": 0.99, "short_weights_kept": 4106,
           "short_val_error_pct": 0.31, "short_s": 2375.0, "short_reused_from": "earlier.json", "long_epochs": 80,
           "long_val_error_pct": 0.3, "long_test_error_pct": 0.9, "long_weights_kept": 4000, "long_s": 5000.0}
    rc.write(_args(None, short=40, long=80, index=1), [row], started=0.0)
    record = json.loads((tmp_path / "retrain_convergence_lenet5_mnist_40v80_ctx1.json").read_text())
    assert record["context_index"] == 1 and record["converged"] is True
    assert "context 1 only" in (tmp_path / "retrain_convergence_lenet5_mnist_40v80_ctx1.md").read_text()
