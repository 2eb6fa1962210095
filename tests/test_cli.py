"""End to end through the command line on a small real subset of MNIST."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch

import bayescomp
from bayescomp.checkpoint import load_checkpoint
from bayescomp.cli import main
from bayescomp.data import load_dataset
from bayescomp.measure import count_flops
from bayescomp.methods import get_method, list_methods
from bayescomp.train import evaluate

CONTRACT_FIELDS = {
    "model", "data", "method", "seed", "test_error_pct", "dense_test_error_pct", "kept_architecture",
    "weights_dense", "weights_kept", "compression_architecture", "compression_bits", "compression_file",
    "bits_per_layer", "flops_dense", "flops_compressed", "latency_ms", "epochs", "wall_time_s", "command",
    "git_commit",
}

SMALL = ["--train-subset", "3000", "--val-size", "1000", "--test-subset", "1000", "--dense-epochs", "2",
         "--epochs", "3", "--batch-size", "100", "--no-progress"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    code = main(["run", "--model", "lenet300", "--data", "mnist", "--method", "gnj", "--run-dir", str(run_dir),
                 *SMALL])
    return code, run_dir


def test_cli_run_writes_report_plots_and_a_loadable_compressed_model(cli_run, capsys):
    code, run_dir = cli_run
    assert code == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert CONTRACT_FIELDS <= set(report)
    assert report["weights_kept"] < report["weights_dense"]
    assert report["compression_architecture"] == pytest.approx(report["weights_dense"] / report["weights_kept"])
    for name in ("report.md", "run.json", "compressed.bcz", "plots/log_alpha.png", "plots/tradeoff.png",
                 "plots/survivors.png"):
        assert (run_dir / name).exists(), name
    # the compressed file is a plain model on [0, 1] images that reproduces the reported test error
    model = bayescomp.load(run_dir / "compressed.bcz")
    assert not any(isinstance(m, bayescomp.priors.BayesianLayer) for m in model.modules())
    data = load_dataset("mnist", val_size=1000, seed=0, train_subset=3000, test_subset=1000)
    assert evaluate(model, data.test)["error_pct"] == pytest.approx(report["test_error_pct"], abs=1e-9)
    assert report["file_bytes_compressed"] == (run_dir / "compressed.bcz").stat().st_size
    assert main(["report", str(run_dir)]) == 0
    assert "Architecture compression" in capsys.readouterr().out


def test_cli_rerun_reuses_dense_model_and_finished_training(cli_run, capsys):
    code, run_dir = cli_run
    capsys.readouterr()
    # a post-training setting changed: the trained posterior and the cached dense model are reused
    assert main(["run", "--model", "lenet300", "--run-dir", str(run_dir), *SMALL, "--no-latency",
                 "--tolerance", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "reusing cached dense model" in out and "reusing the trained posterior" in out
    assert "epoch   1/" not in out  # no training epoch ran again
    # a training setting changed: refused rather than mixing two runs in one directory
    assert main(["run", "--model", "lenet300", "--run-dir", str(run_dir), *SMALL, "--lr", "0.01"]) == 2
    assert "other settings" in capsys.readouterr().err


@pytest.mark.parametrize("search,weights,order", [("auto", None, "joint"), ("greedy", None, "joint"),
                                                 ("greedy", 5, "joint"), ("greedy", 5, "weights_first")])
def test_cli_target_macs_reuses_the_posterior_and_meets_the_budget(search, weights, order, cli_run, tmp_path,
                                                                   capsys):
    """``--target-macs 3`` on a finished run (one shared threshold, or ``--search greedy``; with ``--target-weights
    5`` as well): only compression is redone, and the compressed network's MACs (as the report counts them, checked
    on the saved file) are at most a third of the dense network's, its weights at most a fifth."""
    _, trained = cli_run
    run_dir = tmp_path / "budget"
    shutil.copytree(trained, run_dir)
    capsys.readouterr()
    assert main(["run", "--model", "lenet300", "--run-dir", str(run_dir), *SMALL, "--no-latency", "--no-plots",
                 "--target-macs", "3", "--search", search, "--budget-order", order,
                 *([] if weights is None else ["--target-weights", str(weights)])]) == 0
    assert "epoch   1/" not in capsys.readouterr().out
    report = json.loads((run_dir / "report.json").read_text())
    assert report["config"]["compress"]["target_macs"] == 3
    assert report["config"]["compress"]["target_weights"] == weights
    assert report["config"]["compress"]["search"] == search
    assert report["config"]["compress"]["budget_order"] == order
    model = bayescomp.load(run_dir / "compressed.bcz")
    assert count_flops(model, (1, 28, 28)) <= report["flops_dense"] / 3
    if weights is not None:
        kept = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
        dense = sum(m.weight.numel() for m in bayescomp.create_model("lenet300").modules()
                    if isinstance(m, torch.nn.Linear))
        assert kept <= dense / weights


@pytest.mark.parametrize("args,message", [
    (["--model", "resnet999"], "unknown model 'resnet999'"),
    (["--method", "magic"], "unknown method/prior 'magic'"),
    (["--data", "imagenet"], "imagenet"),
    (["--thresholds=-1e9"], "prune every"),
    (["--method", "gnj", "--tau0", "0.1"], "--tau0 do(es) not apply to --method gnj"),
    (["--method", "magnitude", "--sparsity", "1.0"], "sparsity"),
])
def test_cli_bad_input_gets_clear_errors(args, message, tmp_path, capsys):
    code = main(["run", "--run-dir", str(tmp_path / "r"), *SMALL, "--epochs", "1", "--no-latency", "--no-plots",
                 *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_missing_data_file_is_named(tmp_path, capsys):
    from bayescomp.data import resolve_data_dir

    source = resolve_data_dir(None) / "mnist"
    target = tmp_path / "data" / "mnist"
    target.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "t10k-labels-idx1-ubyte.gz":
            (target / f.name).symlink_to(f)
    code = main(["run", "--data-dir", str(tmp_path / "data"), "--run-dir", str(tmp_path / "r"), *SMALL])
    assert code == 2
    err = capsys.readouterr().err
    assert "t10k-labels-idx1-ubyte.gz" in err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for option in ("--model", "--data", "--method", "--thresholds", "--tolerance", "--epochs", "--restart",
                   "--data-dir", "--seed"):
        assert option in out


def test_cli_finetune_aware_search_picks_a_candidate_within_budget(tmp_path):
    run_dir = tmp_path / "ft"
    code = main(["run", "--model", "lenet300", "--run-dir", str(run_dir), *SMALL, "--no-latency", "--no-plots",
                 "--finetune-epochs", "1", "--finetune-search", "--tolerance", "1.0"])
    assert code == 0
    report = json.loads((run_dir / "report.json").read_text())
    probed = [p for p in report["search_path"] if p.get("finetuned_val_error_pct") is not None]
    assert probed, "the bisection fine-tuned at least one candidate"
    assert report["finetune_epochs"] == 1 and report["test_error_pct_pruned_before_finetune"] is not None
    # the chosen plan is one of the candidates: its weight count appears on the path
    assert report["weights_kept"] in {p["weights_kept"] for p in report["search_path"]}


def test_cli_fine_tuning_recipe_and_distillation_are_recorded_in_the_run_and_checked(tmp_path, capsys):
    run_dir = tmp_path / "kd"
    code = main(["run", "--model", "lenet300", "--run-dir", str(run_dir), *SMALL, "--no-latency", "--no-plots",
                 "--finetune-epochs", "1", "--distill", "0.8", "--distill-temperature", "3",
                 "--finetune-optimizer", "sgd", "--finetune-lr", "0.01", "--finetune-weight-decay", "5e-4"])
    assert code == 0
    finetune = json.loads((run_dir / "run.json").read_text())["finetune"]
    assert (finetune["distill"], finetune["distill_temperature"]) == (0.8, 3.0)
    assert (finetune["optimizer"], finetune["lr"], finetune["weight_decay"]) == ("sgd", 0.01, 5e-4)
    assert main(["run", "--model", "lenet300", "--run-dir", str(tmp_path / "bad"), *SMALL,
                 "--finetune-epochs", "1", "--distill", "1.5"]) != 0
    assert "distill" in capsys.readouterr().err


@pytest.mark.parametrize("method", list_methods())
def test_every_method_accepts_distillation_in_its_fine_tuning(method, tmp_path, monkeypatch):
    """Iterates the registry: wherever a method fine-tunes, --distill reaches fit with the run's dense model as the
    teacher (never a half set-up distillation that fit would refuse mid-run)."""
    import bayescomp.train as train_module

    real_fit, teachers = train_module.fit, []

    def spying_fit(model, data, config, *args, teacher=None, **kwargs):
        if config.distill > 0:
            teachers.append(teacher)
        return real_fit(model, data, config, *args, teacher=teacher, **kwargs)

    for where in ("bayescomp.methods.finetune.fit", "bayescomp.magnitude.fit"):
        monkeypatch.setattr(where, spying_fit)
    short = ["--train-subset", "1000", "--val-size", "500", "--test-subset", "500", "--dense-epochs", "1",
             "--epochs", "1", "--batch-size", "100", "--no-progress"]
    assert main(["run", "--model", "lenet300", "--method", method, "--run-dir", str(tmp_path / method), *short,
                 "--no-latency", "--no-plots", "--finetune-epochs", "1", "--distill", "0.5"]) == 0
    assert all(isinstance(t, torch.nn.Module) for t in teachers)
    spec = get_method(method)
    assert bool(teachers) == (spec.finetune_after_compress or bool(spec.default_finetune_epochs))


@pytest.mark.parametrize("method", list_methods())
def test_every_method_runs_end_to_end_and_its_file_reproduces_the_report(method, tmp_path, capsys):
    """Iterates the method registry: a new method is run end to end the day it lands."""
    run_dir = tmp_path / method
    # methods that fine-tune by default (magnitude pruning: 10 epochs) get a short schedule here
    extra = ["--finetune-epochs", "2"] if get_method(method).default_finetune_epochs else []
    assert main(["run", "--model", "lenet300", "--method", method, "--run-dir", str(run_dir), *SMALL,
                 "--no-latency", *extra]) == 0
    report = json.loads((run_dir / "report.json").read_text())
    assert report["method"] == method
    model = bayescomp.load(run_dir / "compressed.bcz")
    data = load_dataset("mnist", val_size=1000, seed=0, train_subset=3000, test_subset=1000)
    assert evaluate(model, data.test)["error_pct"] == pytest.approx(report["test_error_pct"], abs=1e-9)
    assert report["test_error_pct"] < 20.0
    nonzero = sum(int(torch.count_nonzero(m.weight)) for m in model.modules()
                  if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))
    # the file holds the quantised weights: rounding can only add zeros to the pruned model's
    assert nonzero <= report["weights_nonzero"] <= report["weights_kept"] <= report["weights_dense"]
    assert report["compression_nonzero"] == pytest.approx(report["weights_dense"] / report["weights_nonzero"])
    # regularity fields, the same for every method, computed from the shipped file
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert report["nonzero_blocks"] >= nonzero / 16 and 0.0 <= report["dense_block_share"] <= 1.0
    assert report["regularity"]["nonzero_weights"] == nonzero
    assert report["neurons_removed"] == (300 - layers[0].out_features) + (100 - layers[1].out_features)
    # calibration of the shipped model, recomputed from the file
    from bayescomp.calibration import expected_calibration_error, predictive_probabilities

    probs, labels = predictive_probabilities(model, data.test)
    if method == "self":  # the file also carries the kernel variances: the predictive uncertainty comes back
        from bayescomp.selfcompress.procedure import load_with_uncertainty

        with torch.no_grad():
            x = next(data.test.batches(16))[0]
            moments = load_with_uncertainty(run_dir / "compressed.bcz")(x)
            torch.testing.assert_close(moments.mean, model(x).softmax(dim=1), rtol=1e-4, atol=1e-5)
            assert bool((moments.var > 0).any())
        assert 0.0 <= report["test_error_pct_density"] < 20.0  # the report stage still measures the density twin
        # its deletion tolerance is read only after training: a rerun at another tolerance reuses the trained twin
        capsys.readouterr()
        assert main(["run", "--model", "lenet300", "--method", method, "--run-dir", str(run_dir), *SMALL,
                     "--no-latency", "--prior-option", "tolerance_pct=0.0"]) == 0
        out = capsys.readouterr().out
        assert "reusing the trained posterior" in out and "prior.tolerance_pct" in out and "epoch   1/" not in out
        assert "deleting kernels (tolerance 0.0 points" in out
        assert json.loads((run_dir / "run.json").read_text())["prior"]["tolerance_pct"] == 0.0
    assert report["calibration"]["ece"] == pytest.approx(expected_calibration_error(probs, labels)["ece"], abs=1e-9)
    assert report["calibration"]["rejection_curve"][0]["accuracy_pct"] == pytest.approx(
        100 - report["test_error_pct"], abs=1e-6)
    if method in ("svd", "magnitude"):  # per-weight sparsity: far fewer non-zeros than kept dense weights
        assert report["weights_nonzero"] < 0.5 * report["weights_kept"]
        assert report["compression_csr"] > 1.5
        # the sparse file really is small: below the float32 CSR accounting of the same weights
        assert report["file_bytes_compressed"] * 8 < 32 * report["weights_dense"] / report["compression_csr"] + 8 * 4096
    if method == "svd":  # the deployed log alpha cut is read only after training: a rerun reuses the posterior
        trained = hashlib.sha256((run_dir / "bayes.ckpt").read_bytes()).hexdigest()
        capsys.readouterr()
        assert main(["run", "--model", "lenet300", "--method", method, "--run-dir", str(run_dir), *SMALL,
                     "--no-latency", "--no-plots", "--prior-option", "prune_threshold=-2"]) == 0
        out = capsys.readouterr().out
        assert "reusing the trained posterior" in out and "prior.prune_threshold" in out and "epoch   1/" not in out
        assert hashlib.sha256((run_dir / "bayes.ckpt").read_bytes()).hexdigest() == trained
        cut = json.loads((run_dir / "report.json").read_text())
        assert cut["weights_nonzero"] < report["weights_nonzero"]  # a lower cut keeps fewer weights


def test_run_repeats_from_its_record(tmp_path, capsys):
    """``bayescomp run --config run.json`` reruns a run from its record: same settings, same compressed model."""
    first = tmp_path / "first"
    assert main(["run", "--run-dir", str(first), *SMALL, "--epochs", "1", "--no-latency", "--no-plots",
                 "--precision", "fp32"]) == 0
    again = tmp_path / "again"
    assert main(["run", "--config", str(first / "run.json"), "--run-dir", str(again), "--no-progress",
                 "--precision", "fp32"]) == 0
    assert json.loads((again / "run.json").read_text()) == json.loads((first / "run.json").read_text())
    a = json.loads((first / "report.json").read_text())
    b = json.loads((again / "report.json").read_text())
    assert a["kept_architecture"] == b["kept_architecture"] and a["test_error_pct"] == b["test_error_pct"]
    capsys.readouterr()
    assert main(["run", "--config", str(tmp_path / "missing.json")]) == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["torch", "philox"])
def test_run_records_where_its_noise_came_from_and_repeats_with_it(tmp_path, monkeypatch, source):
    """``--noise`` picks the training noise; the report records it, and the same source and seed give the same
    trained posterior twice."""
    monkeypatch.setattr("bayescomp.noise._source", {"name": None})
    digests = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        assert main(["run", "--run-dir", str(run_dir), *SMALL, "--epochs", "1", "--no-latency", "--no-plots",
                     "--precision", "fp32", "--noise", source]) == 0
        assert json.loads((run_dir / "report.json").read_text())["noise_source"] == source
        state = load_checkpoint(run_dir / "bayes.ckpt")["model"]
        digests.append({k: v.clone() for k, v in state.items()})
    assert digests[0].keys() == digests[1].keys()
    assert all(torch.equal(digests[0][k], digests[1][k]) for k in digests[0])


@pytest.mark.parametrize("mode", ["on", "off"])
def test_run_compiles_its_bayesian_steps_as_asked_and_records_it(tmp_path, monkeypatch, mode):
    """``--compile on|off`` decides the Bayesian training step (a short run: auto would not compile it); the report
    records whether the steps were compiled."""
    monkeypatch.setattr("bayescomp.compiled_step._mode", {"name": None})
    run_dir = tmp_path / mode
    assert main(["run", "--run-dir", str(run_dir), *SMALL, "--epochs", "1", "--no-latency", "--no-plots",
                 "--precision", "fp32", "--compile", mode]) == 0
    assert json.loads((run_dir / "report.json").read_text())["compiled_step"] is (mode == "on")
    assert ("(compiled step)" in (run_dir / "report.md").read_text()) is (mode == "on")
