"""RESULTS.md's acceptance table: variant result files never stand in for a canonical Table 1 row."""

from __future__ import annotations

from benchmarks.acceptance import acceptance_table


def _run(stem: str, error: float, compression: float, **extra) -> dict:
    model, data, method = stem.split("_")[:3]
    return {"model": model, "data": data, "method": method, "_stem": stem, "test_error_pct": error,
            "compression_architecture": compression, **extra}


def test_a_blind_variant_is_judged_on_its_own_target_and_does_not_replace_the_row():
    runs = [_run("lenet300_mnist_ghs", 1.49, 10.5),
            _run("lenet300_mnist_ghs_blind200", 1.75, 12.4, selection="blind.json")]
    table = acceptance_table(runs, [])
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()[2:]}
    assert "1.49 % at 10.5x" in lines["LeNet-300-100 BC-GHS: error <= 1.8 % at >= 9x"]
    blind = lines["LeNet-300-100 BC-GNJ or BC-GHS: error <= 1.8 % at >= 12x, setting chosen on validation only"]
    assert "1.75 % at 12.4x" in blind and blind.endswith("| yes |")


def test_the_blind_target_fails_when_the_blind_run_misses_it():
    runs = [_run("lenet300_mnist_ghs_blind200", 1.9, 14.0, selection="blind.json")]
    row = [line for line in acceptance_table(runs, []).splitlines() if "chosen on validation only" in line]
    assert len(row) == 1 and row[0].endswith("| no |")
