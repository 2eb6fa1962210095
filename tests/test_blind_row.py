"""The blind-selection rule of benchmarks/blind_row.py: validation only, most compression within the allowance."""

from __future__ import annotations

import pytest

from benchmarks.blind_row import choose


def _c(tolerance: float, compression: float, qualifies: bool) -> dict:
    return {"tolerance_pct": tolerance, "compression_architecture": compression, "val_error_pct": 2.0,
            "qualifies": qualifies}


def test_the_most_compressed_qualifying_candidate_is_chosen():
    chosen, met = choose([_c(0.2, 9.0, True), _c(0.4, 11.0, True), _c(0.6, 13.0, False)])
    assert met and chosen["tolerance_pct"] == 0.4


def test_a_tie_goes_to_the_smaller_tolerance():
    chosen, met = choose([_c(0.6, 11.0, True), _c(0.4, 11.0, True)])
    assert met and chosen["tolerance_pct"] == 0.4


def test_without_a_qualifying_candidate_the_smallest_tolerance_is_taken_and_flagged():
    chosen, met = choose([_c(0.4, 11.0, False), _c(0.2, 9.0, False)])
    assert not met and chosen["tolerance_pct"] == 0.2


def test_another_seed_writes_beside_seed_zero_never_over_it():
    from benchmarks.blind_row import seed_suffix

    assert seed_suffix(0) == "" and seed_suffix(2) == "_seed2"


def test_turbo_and_sparse_vd_are_ranked_by_non_zero_compression():
    from benchmarks.blind_row import METRICS

    sparse = {"tolerance_pct": 0.2, "compression_architecture": 3.0, "compression_nonzero": 40.0, "qualifies": True}
    wide = {"tolerance_pct": 0.4, "compression_architecture": 4.0, "compression_nonzero": 30.0, "qualifies": True}
    assert choose([sparse, wide], METRICS["turbo"])[0] is sparse
    assert choose([sparse, wide], METRICS.get("gnj", "architecture"))[0] is wide
    assert METRICS["svd"] == "nonzero" and "gnj" not in METRICS and "ghs" not in METRICS


def test_prior_variants_tie_to_the_earlier_and_the_fallback_takes_the_lowest_validation_error():
    def c(variant, tolerance, compression, val, qualifies):
        return {"variant": variant, "tolerance_pct": tolerance, "compression_architecture": compression,
                "val_error_pct": val, "qualifies": qualifies}

    first, second = c(0, 0.4, 11.0, 1.9, True), c(1, 0.4, 11.0, 1.8, True)
    assert choose([second, first])[0] is first  # equal compression and tolerance: the earlier variant
    missed = [c(0, 0.2, 9.0, 2.3, False), c(1, 0.2, 8.0, 2.1, False), c(1, 0.4, 12.0, 2.0, False)]
    chosen, met = choose(missed)
    assert not met and chosen is missed[1]  # smallest tolerance, then the lower validation error


def test_the_markdown_names_the_variants_and_the_non_zero_headline():
    from benchmarks.blind_row import markdown

    cands = [{"variant": v, "prior": p, "tolerance_pct": 0.2, "kept_architecture": "400-80-90",
              "compression_architecture": 3.0, "compression_nonzero": n, "val_error_pct_pruned": 2.0,
              "val_error_pct": 1.9, "qualifies": True} for v, p, n in ((0, {}, 30.0), (1, {"slab_std": 10.0}, 20.0))]
    record = {"model": "lenet300", "method": "turbo", "epochs": 30, "seed": 0, "command": "c", "torch_threads": 1,
              "wall_time_s": 60.0, "dense_val_error_pct": 1.8, "allowance_pct": 0.2, "metric": "nonzero",
              "variants": [{}, {"slab_std": 10.0}], "candidates": cands, "chosen": cands[0], "rule_met": True,
              "published": "p.json", "result": {"test_error_pct": 1.7, "compression_architecture": 3.0,
                                                 "compression_bits": 5.0, "compression_nonzero": 30.0,
                                                 "kept_architecture": "400-80-90", "dense_test_error_pct": 1.6}}
    text = markdown(record)
    assert "largest non-zero compression" in text and "variant 0 (prior {})" in text
    assert "**1.70 % at 30.0x non-zero**" in text and '1: `{"slab_std": 10.0}`' in text
    assert "| 1 | 0.2 | 400-80-90 | 3.0 | 20.0 | 2.00 | 1.90 | yes |" in text


def test_the_seed_spread_of_a_non_zero_rerun_says_non_zero():
    from benchmarks._common import seed_spread_text

    rows = [{"test_error_pct": e, "compression_architecture": 3.0, "compression_nonzero": n, "seed": s,
             "selection_metric": "nonzero"} for e, n, s in ((1.6, 30.0, 0), (1.8, 40.0, 1))]
    assert seed_spread_text(rows) == "1.70 ± 0.14 % at 35.0 ± 7.1x non-zero over seeds 0, 1"
    assert seed_spread_text(rows[:1]) == "1.60 % at 30.0x non-zero"


def test_a_tolerance_that_prunes_to_the_same_model_reuses_the_measured_figures(monkeypatch):
    from types import SimpleNamespace

    import torch

    from bayescomp.methods import RunContext
    from bayescomp.pipeline import RunConfig
    from benchmarks import blind_row

    torch.manual_seed(0)
    models = {0.2: torch.nn.Linear(4, 2), 0.4: None, 0.6: torch.nn.Linear(4, 2)}
    models[0.4] = torch.nn.Linear(4, 2)
    models[0.4].load_state_dict(models[0.2].state_dict())  # 0.4 prunes to exactly 0.2's model
    method = SimpleNamespace(compress=lambda _, trial: SimpleNamespace(model=models[trial.config.compress.tolerance_pct]))
    measured = []

    def measure(result, trial, tolerance, dense_val):
        measured.append(tolerance)
        return {"tolerance_pct": tolerance, "val_error_pct": 1.0 + tolerance, "qualifies": True}

    monkeypatch.setattr(blind_row, "_measure", measure)
    ctx = RunContext(config=RunConfig(), data=None, dense=None, run_dir=None, settings=None)
    seen: dict = {}
    out = [blind_row.candidate(method, ctx, torch.nn.Linear(1, 1), t, 1.0, seen) for t in (0.2, 0.4, 0.6)]
    assert measured == [0.2, 0.6]
    assert out[1]["tolerance_pct"] == 0.4 and out[1]["val_error_pct"] == 1.2 and out[1]["same_model_as_tolerance"] == 0.2
    assert "same_model_as_tolerance" not in out[2] and out[2]["val_error_pct"] == 1.6


def test_a_tagged_variant_writes_apart_and_is_not_counted_among_the_rows_seeds():
    from benchmarks._common import blind_reruns
    from benchmarks.blind_row import parse_prior_set, seed_suffix

    assert seed_suffix(0, "wbatch") == "_wbatch" and seed_suffix(1, "wbatch") == "_wbatch_seed1"
    assert parse_prior_set(["weight_sampling=batch", "clip_var=0.2", "x=null"]) == {
        "weight_sampling": "batch", "clip_var": 0.2, "x": None}
    with pytest.raises(SystemExit, match="key=value"):
        parse_prior_set(["weight_sampling"])
    row = {"model": "lenet300", "method": "gnj", "selection": "a.json", "seed": 0}
    tagged = {**row, "selection": "b.json", "selection_tag": "wbatch"}
    assert blind_reruns([row, tagged]) == {("lenet300", "gnj"): [row]}
