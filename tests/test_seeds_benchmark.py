"""The seed study's result file survives two processes running different seeds of one model at once."""

from __future__ import annotations

import argparse
import json

import benchmarks.seeds as seeds


def _row(method: str, seed: int, error: float) -> dict:
    return {"method": method, "seed": seed, "source": "rerun", "test_error_pct": error,
            "compression_architecture": 100.0 + seed, "compression_bits": 300.0 + seed,
            "kept_architecture": "8-12-88-15", "dense_test_error_pct": 0.6, "wall_time_s": 1.0}


def test_write_merges_rows_written_by_another_process(tmp_path, monkeypatch):
    monkeypatch.setattr(seeds, "RESULTS", tmp_path)
    path = tmp_path / "seeds_lenet5_mnist.json"
    args = argparse.Namespace(model="lenet5", data="mnist", methods=["ghs"])
    first = [_row("ghs", 0, 1.0)]
    second = list(first)  # a second process read the file when it held seed 0 only
    seeds._write(path, "seeds_lenet5_mnist", args, first + [_row("ghs", 1, 0.9)])
    seeds._write(path, "seeds_lenet5_mnist", args, second + [_row("ghs", 2, 1.1)])
    record = json.loads(path.read_text())
    assert [(r["method"], r["seed"]) for r in record["runs"]] == [("ghs", 0), ("ghs", 1), ("ghs", 2)]
    assert record["summary"]["ghs"]["n"] == 3
    assert abs(record["summary"]["ghs"]["test_error_pct"]["mean"] - 1.0) < 1e-9
    # the writing process's own row wins for the same (method, seed)
    seeds._write(path, "seeds_lenet5_mnist", args, [_row("ghs", 1, 0.8)])
    runs = {r["seed"]: r for r in json.loads(path.read_text())["runs"]}
    assert runs[1]["test_error_pct"] == 0.8 and set(runs) == {0, 1, 2}
    assert "| ghs | 0, 1, 2 |" in (tmp_path / "seeds_lenet5_mnist.md").read_text()
