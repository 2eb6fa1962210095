"""The self-compression study's result file is shared by processes that run different seeds."""

from __future__ import annotations

import json

import torch

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


def _study_run(seed: int, bayes_accuracy: float, rho: float) -> dict:
    return {"data": "mnist", "kernels": 25, "seed": seed, "rho_init": rho,
            "accuracy_before": {"plain": 98.5, "bayes": bayes_accuracy}, "wall_time_s": 1.0,
            "min_over_median_norm": {"plain": 0.6, "bayes": 0.7},
            "equal_count_drops": {"0.5": {"kept": 12, "plain": 1.0 + seed, "bayes_norm": -2.0, "bayes_snr": -2.0}},
            "self_compression": {"kept": 20, "plain_drop": 0.1, "bayes_drop": 0.2}}


def test_a_bayesian_net_at_chance_voids_its_rows_and_only_those():
    from benchmarks.self_compression_seeds import VOID, markdown, summarise

    runs = [_study_run(s, 10.3, -2.2) for s in range(3)] + [_study_run(s, 98.0, -10.0) for s in range(3)]
    rows = summarise(runs)
    assert {r["verdict"] for r in rows if r["rho_init"] == -2.2} == {VOID}
    kept = [r for r in rows if r["rho_init"] == -10.0]
    assert kept and VOID not in {r["verdict"] for r in kept}
    assert next(r for r in kept if r["comparison"] == "keep 50%, norm")["verdict"] == "Bayesian loses less"
    text = markdown(runs, rows, ["c"], "none")
    assert f"over {len(kept)} comparisons" in text and f"{len(rows) - len(kept)} comparisons are void" in text


def test_void_rows_are_not_plotted():
    from benchmarks._common import RESULTS
    from benchmarks.self_compression_seeds import plot, summarise

    rows = summarise([_study_run(s, 10.3, -2.2) for s in range(3)])
    plot(rows, "test_void_only_never_written")
    assert not (RESULTS / "plots" / "test_void_only_never_written.png").exists()


def test_covariance_and_image_size_are_part_of_a_run_and_old_runs_read_as_diag_28():
    from benchmarks.self_compression_seeds import group, run_key, summarise

    old = _study_run(0, 98.0, -10.0)
    full = {**_study_run(0, 98.0, -10.0), "covariance": "full", "image_size": 14}
    assert run_key(old) == ("mnist", 25, 0, -10.0, "diag", 28)
    assert run_key(full) != run_key(old) and group(full) == ("mnist", 25, -10.0, "full", 14)
    rows = summarise([old, full])
    assert {(r["covariance"], r["image_size"]) for r in rows} == {("diag", 28), ("full", 14)}
    assert all(r["n"] == 1 for r in rows)  # never pooled across settings


def test_downsampled_images_are_2x2_block_means_and_labels_stay():
    from bayescomp.data import DataBundle, TensorData
    from benchmarks.self_compression_seeds import downsampled

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 1, 28, 28), generator=gen, dtype=torch.uint8)
    split = TensorData(images, torch.tensor([1, 2, 3]))
    data = DataBundle("mnist", split, split, split, 10, (1, 28, 28), (0.1,), (0.3,), tuple("0123456789"))
    small = downsampled(data, 14)
    expected = images.double().view(3, 1, 14, 2, 14, 2).mean((3, 5))
    assert small.input_shape == (1, 14, 14) and small.train.images.dtype == torch.uint8
    assert (small.test.images.double() - expected).abs().max() <= 0.5  # rounded to the nearest integer
    assert torch.equal(small.val.labels, split.labels)
    assert downsampled(data, 28) is data


def test_a_learned_but_much_weaker_bayesian_net_is_flagged_and_keeps_its_verdict():
    from benchmarks.self_compression_seeds import markdown, summarise, weak_settings

    weak = [_study_run(s, 40.0, -2.2) for s in range(3)]  # learned (>= 20 %) but 58.5 points below plain
    strong = [_study_run(s, 97.0, -10.0) for s in range(3)]
    assert [key for key, _, _ in weak_settings(weak + strong)] == [("mnist", 25, -2.2, "diag", 28)]
    rows = summarise(weak + strong)
    flagged = next(r for r in rows if r["rho_init"] == -2.2 and r["comparison"] == "keep 50%, norm")
    assert flagged["verdict"] == "Bayesian loses less"  # the annotation does not touch the verdict
    text = markdown(weak + strong, rows, ["c"], "none")
    assert "Read with care" in text and "rho -2.2, diag, 28 px (40.0 % against 98.5 %)" in text
    assert "rho -10" not in text.split("Read with care")[1].split("\n")[0]
