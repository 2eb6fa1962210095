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
    import dataclasses
    from types import SimpleNamespace

    import torch

    from bayescomp.methods import RunContext, get_method
    from bayescomp.pipeline import RunConfig
    from benchmarks import blind_row

    torch.manual_seed(0)
    models = {0.2: torch.nn.Linear(4, 2), 0.4: None, 0.6: torch.nn.Linear(4, 2)}
    models[0.4] = torch.nn.Linear(4, 2)
    models[0.4].load_state_dict(models[0.2].state_dict())  # 0.4 prunes to exactly 0.2's model
    method = dataclasses.replace(get_method("gnj"), compress=lambda _, trial: SimpleNamespace(
        model=models[trial.config.compress.tolerance_pct]))
    measured = []

    def measure(result, trial, tolerance, dense_val, finetune=True):
        measured.append(tolerance)
        return {"tolerance_pct": tolerance, "val_error_pct": 1.0 + tolerance, "qualifies": True}

    monkeypatch.setattr(blind_row, "_measure", measure)
    ctx = RunContext(config=RunConfig(), data=None, dense=None, run_dir=None, settings=None, extras={"allowance": 0.2})
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


def test_a_finetuning_override_changes_only_what_it_names_and_needs_a_tag(monkeypatch):
    from benchmarks import blind_row

    recipe = blind_row.recipe("lenet5", "svd", 0).finetune
    assert recipe.epochs == 0  # Sparse VD's row does not fine-tune
    assert blind_row.with_finetune(recipe, None, None) is recipe
    changed = blind_row.with_finetune(recipe, 10, 5e-4)
    assert (changed.epochs, changed.lr, changed.lr_schedule) == (10, 5e-4, "cosine")
    assert (changed.batch_size, changed.optimizer, changed.seed) == (recipe.batch_size, recipe.optimizer, recipe.seed)
    assert blind_row.with_finetune(recipe, 3, None).lr == recipe.lr
    for epochs, lr in ((-1, None), (2, 0.0)):
        with pytest.raises(SystemExit):
            blind_row.with_finetune(recipe, epochs, lr)
    monkeypatch.setattr("sys.argv", ["blind_row", "--model", "lenet5", "--method", "svd", "--finetune-epochs", "10"])
    with pytest.raises(SystemExit, match="--tag"):
        blind_row.main()
    ghs = blind_row.recipe("lenet5", "ghs", 0).finetune
    distilled = blind_row.with_finetune(ghs, None, None, 0.9)
    assert (distilled.distill, distilled.epochs, distilled.lr, distilled.lr_schedule) == (
        0.9, ghs.epochs, ghs.lr, ghs.lr_schedule)
    assert ghs.distill == 0.0
    for alpha in (0.0, 1.5):
        with pytest.raises(SystemExit, match="--distill"):
            blind_row.with_finetune(ghs, None, None, alpha)
    monkeypatch.setattr("sys.argv", ["blind_row", "--model", "lenet5", "--method", "ghs", "--distill", "0.9"])
    with pytest.raises(SystemExit, match="--tag"):
        blind_row.main()


def _bits(reduce: str, quantized: float, arch: str = "8-10-71-13") -> dict:
    return {"bits_reduce": reduce, "kept_architecture": arch, "val_error_pct": 1.00, "val_error_pct_quantized": quantized,
            "bits_per_layer": [12, 10], "compression_bits": 300.0}


def test_the_reference_bits_are_taken_only_within_the_allowance():
    from benchmarks.blind_row import choose_bits

    recipe = _bits("max", 1.00)
    assert choose_bits(recipe, _bits("mean", 1.10), 0.1)["bits_reduce"] == "mean"  # exactly at the allowance
    assert choose_bits(recipe, _bits("mean", 1.12), 0.1) is recipe
    assert choose_bits(recipe, _bits("mean", 1.12), 0.2)["bits_reduce"] == "mean"
    with pytest.raises(ValueError, match="different pruned models"):
        choose_bits(recipe, _bits("mean", 1.0, "8-10-70-13"), 0.1)


@pytest.mark.parametrize("method", ["gnj", "ghs"])
def test_a_candidate_records_its_quantised_validation_error_and_bits(method):
    """On a real pruned LeNet-300-100 (both group priors, which the bits step serves): the recorded quantised
    error is the quantised model's own (an independent evaluation of ``result.quantized_model``), and the
    reference's mean reduction never needs more bits."""
    from dataclasses import replace

    from bayescomp.bayesify import bayesify
    from bayescomp.compress import CompressConfig, compress
    from bayescomp.data import load_dataset
    from bayescomp.methods import RunContext
    from bayescomp.models import create_model
    from bayescomp.pipeline import RunConfig
    from bayescomp.train import TrainConfig, evaluate, fit, seed_everything
    from benchmarks.blind_row import _measure

    data = load_dataset("mnist", val_size=500, seed=0, train_subset=2000, test_subset=100)
    seed_everything(0)
    model = bayesify(create_model("lenet300", 10, (1, 28, 28), data.mean, data.std), method)
    fit(model, data, TrainConfig(epochs=2, batch_size=128, lr=3e-3, seed=0), progress=False, log=lambda *_: None)
    config = RunConfig(finetune=TrainConfig(epochs=0))
    ctx = RunContext(config=config, data=data, dense=None, run_dir=None, settings=None, extras={"allowance": 0.2})
    figures, threshold = {}, -1.0 if method == "gnj" else None  # GHS: its own default statistic and threshold
    for reduce in ("max", "mean"):
        result = compress(model, data.val, CompressConfig(thresholds=threshold, bits_reduce=reduce))
        trial = replace(ctx, config=replace(config, compress=replace(config.compress, bits_reduce=reduce)))
        figures[reduce] = _measure(result, trial, 0.2, 1.0)
        assert figures[reduce]["val_error_pct_quantized"] == evaluate(result.quantized_model, data.val)["error_pct"]
        assert figures[reduce]["bits_per_layer"] == result.bits_per_layer and figures[reduce]["bits_reduce"] == reduce
    assert figures["mean"]["kept_architecture"] == figures["max"]["kept_architecture"]
    assert all(a <= b for a, b in zip(figures["mean"]["bits_per_layer"], figures["max"]["bits_per_layer"]))
    assert figures["mean"]["compression_bits"] >= figures["max"]["compression_bits"]


def test_the_markdown_states_the_bits_rule_and_what_it_tried():
    from benchmarks.blind_row import markdown

    cand = {"tolerance_pct": 0.2, "kept_architecture": "8-10-71-13", "compression_architecture": 130.0,
            "compression_nonzero": 130.0, "val_error_pct_pruned": 1.1, "val_error_pct": 1.0, "qualifies": True}
    tried = [_bits("max", 1.00), {**_bits("mean", 1.04), "bits_per_layer": [9, 7], "compression_bits": 420.0}]
    record = {"model": "lenet5", "method": "gnj", "epochs": 200, "seed": 1, "tag": "valbits", "command": "c",
              "torch_threads": 2, "wall_time_s": 60.0, "dense_val_error_pct": 0.8, "allowance_pct": 0.2,
              "metric": "architecture", "variants": [{}], "candidates": [cand], "chosen": cand, "rule_met": True,
              "bits_choice": {"allowance_pct": 0.1, "tried": tried, "chosen": "mean"},
              "published": "p.json", "result": {"test_error_pct": 0.9, "compression_architecture": 130.0,
                                                 "compression_bits": 420.0, "compression_nonzero": 130.0,
                                                 "kept_architecture": "8-10-71-13", "dense_test_error_pct": 0.6}}
    text = markdown(record)
    assert "`mean`: bits 9-7, 420.0x, quantised validation error 1.04 %" in text
    assert "Chosen: `mean`." in text and "(1.00 %) + 0.1 points" in text


def test_train_only_trains_every_variant_and_reads_no_split_after_training(monkeypatch):
    import sys
    from types import SimpleNamespace

    from benchmarks import blind_row

    trained = []

    def fake_train(config, run_dir, device=None, cuda_graphs=False):
        trained.append((config.prior, run_dir.name))
        return None, SimpleNamespace(dense=None, data=None), None

    def forbidden(*args, **kwargs):
        raise AssertionError("--train-only must not evaluate, prune or run the pipeline")

    monkeypatch.setattr(blind_row, "train_variant", fake_train)
    for name in ("evaluate", "candidate", "run", "publish"):
        monkeypatch.setattr(blind_row, name, forbidden)
    monkeypatch.setattr(sys, "argv", ["blind_row", "--model", "lenet300", "--method", "turbo", "--epochs", "3",
                                      "--seed", "2", "--prior-variants", "{}", '{"slab_std": 10.0}', "--train-only"])
    blind_row.main()
    assert [d for _, d in trained] == ["lenet300_turbo_3_seed2_v0", "lenet300_turbo_3_seed2_v1"]
    assert trained[1][0]["slab_std"] == 10.0 and trained[0][0].get("slab_std") != 10.0


@pytest.mark.parametrize("name", ["self", "gnj"])
def test_the_tolerance_sweep_reaches_a_method_that_owns_its_tolerance(name):
    """Self-compression deletes kernels within its own ``tolerance_pct`` and never calls the shared search: each
    candidate must hand the method settings at the swept tolerance (else every candidate is the same model), while a
    method without its own tolerance keeps its prior settings untouched."""
    import dataclasses

    from torch import nn

    from bayescomp.methods import RunContext, get_method
    from bayescomp.pipeline import RunConfig
    from benchmarks.blind_row import at_tolerance, candidate

    class Captured(Exception):
        pass

    seen = []

    def capture(model, ctx):
        seen.append((ctx.config.compress.tolerance_pct, getattr(ctx.settings, "tolerance_pct", None),
                     dict(ctx.config.prior)))
        raise Captured  # what compress was handed is all this test needs

    method = dataclasses.replace(get_method(name), compress=capture)
    config = RunConfig(method=name, prior=method.settings_dict())
    ctx = RunContext(config=config, data=None, dense=None, run_dir=None, settings=method.make_settings(config.prior),
                     extras={"allowance": 0.2})
    for tolerance in (0.2, 1.5):
        with pytest.raises(Captured):
            candidate(method, ctx, nn.Linear(2, 2), tolerance, 1.0)
    if name == "self":
        assert [(s[0], s[1]) for s in seen] == [(0.2, 0.2), (1.5, 1.5)]
        assert at_tolerance(method, config, 0.8).prior["tolerance_pct"] == 0.8
    else:
        assert [s[0] for s in seen] == [0.2, 1.5] and all(s[2] == config.prior for s in seen)
        assert at_tolerance(method, config, 0.8).prior == config.prior
    assert ctx.settings == method.make_settings(config.prior)  # the shared context is left as it was


def test_the_markdown_says_when_the_method_does_not_fine_tune():
    from benchmarks.blind_row import markdown

    cand = {"tolerance_pct": 0.2, "kept_architecture": "784-58-52", "compression_architecture": 5.4,
            "compression_nonzero": 5.4, "val_error_pct_pruned": 2.9, "val_error_pct": 2.9, "qualifies": False}
    record = {"model": "lenet300", "method": "self", "epochs": 30, "seed": 0, "tag": "", "command": "c",
              "torch_threads": 1, "wall_time_s": 60.0, "dense_val_error_pct": 1.9, "allowance_pct": 0.2,
              "metric": "architecture", "variants": [{}], "candidates": [cand], "chosen": cand, "rule_met": False,
              "published": "p.json", "result": {"test_error_pct": 2.4, "compression_architecture": 5.4,
                                                 "compression_bits": 5.4, "compression_nonzero": 5.4,
                                                 "kept_architecture": "784-58-52", "dense_test_error_pct": 1.6}}
    assert "does not fine-tune" not in markdown(record)  # older records carry no flag: nothing claimed
    assert "does not fine-tune after pruning" in markdown({**record, "finetunes": False})
    assert "does not fine-tune" not in markdown({**record, "finetunes": True})


def test_post_training_variants_are_checked_chosen_and_shown():
    from benchmarks.blind_row import choose, markdown, post_variants
    from bayescomp.methods import get_method

    svd = get_method("svd")
    assert post_variants(svd, None) == [{}]
    assert post_variants(svd, [{"prune_threshold": 2.0}]) == [{"prune_threshold": 2.0}]
    with pytest.raises(SystemExit, match="not post-training settings"):
        post_variants(svd, [{"threshold": 2.0}])  # training reads it: it needs a posterior of its own
    with pytest.raises(SystemExit, match="not post-training settings"):
        post_variants(get_method("gnj"), [{"prune_threshold": 2.0}])
    with pytest.raises(SystemExit, match="JSON objects"):
        post_variants(svd, [2.0])

    def cand(post: int, nonzero: float, val: float) -> dict:
        return {"variant": 0, "prior": {}, "post_variant": post, "post": {"prune_threshold": 3.0 - post},
                "tolerance_pct": 0.2, "kept_architecture": "1-2", "compression_architecture": 2.0,
                "compression_nonzero": nonzero, "val_error_pct_pruned": val, "val_error_pct": val,
                "qualifies": val <= 1.0}

    candidates = [cand(0, 190.0, 0.9), cand(1, 260.0, 0.95), cand(2, 260.0, 0.97), cand(3, 380.0, 1.2)]
    chosen, met = choose(candidates, "nonzero")
    assert met and chosen is candidates[1]  # the most compressed qualifying; a tie goes to the earlier post variant
    record = {"model": "lenet5", "method": "svd", "epochs": 200, "seed": 0, "tag": "t", "command": "c",
              "torch_threads": 1, "wall_time_s": 60.0, "dense_val_error_pct": 0.8, "allowance_pct": 0.2,
              "metric": "nonzero", "variants": [{}], "post_variants": [c["post"] for c in candidates],
              "candidates": candidates, "chosen": chosen, "rule_met": met, "published": "p.json",
              "result": {"test_error_pct": 0.7, "compression_architecture": 2.0, "compression_bits": 3.0,
                         "compression_nonzero": 260.0, "kept_architecture": "1-2", "dense_test_error_pct": 0.6}}
    text = markdown(record)
    assert "post-training settings 1 (`{\"prune_threshold\": 2.0}`)" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| post | tolerance") and rows[2].startswith("| 1 | 0.2 |")
    assert all(row.count("|") == rows[0].count("|") for row in rows)


def test_compress_settings_are_checked_need_a_tag_and_are_shown(monkeypatch):
    from benchmarks import blind_row

    assert blind_row.compress_changes(["thresholds=search", "tolerance_pct=0.5"]) == {
        "thresholds": "search", "tolerance_pct": 0.5}
    with pytest.raises(SystemExit, match="not CompressConfig fields"):
        blind_row.compress_changes(["threshold=search"])
    monkeypatch.setattr("sys.argv", ["blind_row", "--model", "lenet5", "--method", "turbo", "--compress-set",
                                     "thresholds=search"])
    with pytest.raises(SystemExit, match="--tag"):
        blind_row.main()
    candidate = {"variant": 0, "prior": {}, "tolerance_pct": 0.2, "kept_architecture": "1-2",
                 "compression_architecture": 2.0, "compression_nonzero": 9.0, "val_error_pct_pruned": 1.0,
                 "val_error_pct": 1.0, "qualifies": True}
    record = {"model": "lenet5", "method": "turbo", "epochs": 30, "seed": 0, "tag": "search", "command": "c",
              "torch_threads": 1, "wall_time_s": 60.0, "dense_val_error_pct": 0.8, "allowance_pct": 0.2,
              "metric": "nonzero", "variants": [{}], "compress_set": {"thresholds": "search"},
              "candidates": [candidate], "chosen": candidate, "rule_met": True, "published": "p.json",
              "result": {"test_error_pct": 0.7, "compression_architecture": 2.0, "compression_bits": 3.0,
                         "compression_nonzero": 9.0, "kept_architecture": "1-2", "dense_test_error_pct": 0.6}}
    assert '`{"thresholds": "search"}`' in blind_row.markdown(record)
    assert "How the posterior is read" not in blind_row.markdown({**record, "compress_set": {}})
