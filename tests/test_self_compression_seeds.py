"""The self-compression study's result file is shared by processes that run different seeds."""

from __future__ import annotations

import json

from benchmarks.self_compression_seeds import merged


def _run(seed: int, accuracy: float = 98.0) -> dict:
    return {"data": "mnist", "kernels": 25, "seed": seed, "rho_init": -2.2, "accuracy": accuracy}


def test_runs_another_process_wrote_are_kept_and_its_copy_wins(tmp_path):
    path = tmp_path / "study.json"
    assert merged(path, [_run(0)], "a") == ([_run(0)], ["a"])
    path.write_text(json.dumps({"command": "old", "runs": [_run(1), _run(0, 97.0)]}))
    runs, commands = merged(path, [_run(0), _run(2)], "new")
    assert runs == [_run(1), _run(0, 97.0), _run(2)]  # nothing lost, nothing twice
    assert commands == ["old", "new"]
    path.write_text(json.dumps({"commands": ["old", "new"], "runs": runs}))
    assert merged(path, [], "new")[1] == ["old", "new"]
