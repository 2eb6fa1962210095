"""benchmarks/turbo_neuron.py: candidate labels, the validation rule and the markdown of old and new result files."""

from __future__ import annotations

import json

from benchmarks._common import RESULTS
from benchmarks.turbo_neuron import CONTROL, Pricing, candidate_label, choose, markdown


def test_candidate_labels_and_the_validation_rule():
    assert candidate_label(CONTROL) == "plain"
    assert candidate_label((0.5, 0.05)) == "p0.5_cost0.05" and candidate_label((1e-4, 0.0)) == "p0.0001"
    assert candidate_label((0.5, 0.01), Pricing("mac")) == "p0.5_mac0.01"
    assert candidate_label(CONTROL, Pricing("mac")) == "plain"
    candidates = {(0.5, 0.02): {"val_error_pct": 0.9, "compression_nonzero": 109.0},
                  (0.5, 0.05): {"val_error_pct": 0.96, "compression_nonzero": 112.0},
                  (0.5, 0.1): {"val_error_pct": 1.2, "compression_nonzero": 300.0}}
    assert choose(candidates, 1.0) == (0.5, 0.05)  # most compression within the target; 0.1 misses it
    assert choose({(0.5, 0.1): candidates[(0.5, 0.1)]}, 1.0) == (0.5, 0.1)  # none qualifies: lowest val error


def test_markdown_reads_the_committed_result_files_of_both_formats():
    """The p_neuron-only file (candidates keyed by p) and the neuron-cost file (keyed by label, with fields)."""
    for stem, needle in (("turbo_neuron_lenet5_mnist", "| 0.0001 | 0 |"),
                         ("turbo_neuron_lenet5_mnist_cost", "| 0.5 | 0.05 |")):
        text = markdown(json.loads((RESULTS / f"{stem}.json").read_text()))
        assert needle in text and "| gnj |" in text


def test_markdown_names_the_unit_of_a_cost_per_mac():
    result = json.loads((RESULTS / "turbo_neuron_lenet5_mnist_cost.json").read_text())
    result["neuron_cost_per"] = "mac"
    text = markdown(result)
    assert "nats per MAC" in text and "nats per weight" not in text


def test_the_data_evidence_option_is_labelled_configured_and_named(monkeypatch, tmp_path):
    """``--neuron-evidence fisher``: its own run directories and labels, the option in the trained config (the
    control keeps the plain Turbo recipe), and the markdown says the neurons heard the data."""
    import benchmarks.turbo_neuron as bench

    assert candidate_label((0.5, 0.02), Pricing("mac", 0, "fisher")) == "p0.5_mac0.02_fisher"
    assert candidate_label((0.5, 0.02), Pricing("mac")) == "p0.5_mac0.02"
    assert candidate_label(CONTROL, Pricing("mac", 0, "fisher")) == "plain"
    seen = {}
    monkeypatch.setattr(bench, "run_or_reuse", lambda config, run_dir, restart: seen.update({run_dir.name: config}))
    bench.train_candidate("lenet5", (0.5, 0.02), tmp_path, False, pricing=Pricing("mac", evidence="fisher"))
    bench.train_candidate("lenet5", CONTROL, tmp_path, False, pricing=Pricing("mac", evidence="fisher"))
    fisher = seen["lenet5_mnist_turbo_neuron_p0.5_mac0.02_fisher"].prior
    assert fisher["neuron_evidence"] == "fisher" and fisher["neuron_support"] and fisher["neuron_cost_per"] == "mac"
    assert seen["lenet5_mnist_turbo_plain"].prior.get("neuron_evidence", "weights") == "weights"
    result = json.loads((RESULTS / "turbo_neuron_lenet5_mnist_cost.json").read_text())
    result["neuron_evidence"] = "fisher"
    assert "the data's evidence" in markdown(result)
    del result["neuron_evidence"]
    assert "the data's evidence" not in markdown(result)
