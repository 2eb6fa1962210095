"""benchmarks/epoch_cost.py: where its figures are written."""

from __future__ import annotations

from pathlib import Path

from benchmarks._common import RESULTS
from benchmarks.epoch_cost import output_stem


def test_a_bare_name_goes_to_the_results_folder_and_a_path_is_kept():
    assert output_stem("epoch_cost_x") == RESULTS / "epoch_cost_x"
    assert output_stem("benchmarks/results/epoch_cost_x") == Path("benchmarks/results/epoch_cost_x")
    assert output_stem("/tmp/epoch_cost_x") == Path("/tmp/epoch_cost_x")
