"""The one report schema (bayescomp.report_schema.Report, issue 17 item 7) against a real run's report.json."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bayescomp.cli import main
from bayescomp.report import load_report
from bayescomp.report_schema import REPORT_KEYS, REQUIRED_KEYS, Report, check_report

TINY = ["run", "--model", "lenet300", "--data", "mnist", "--method", "gnj", "--train-subset", "1000",
        "--val-size", "500", "--test-subset", "500", "--dense-epochs", "1", "--epochs", "1", "--batch-size", "100",
        "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One short real run with latency and plots, so the optional keys it writes are checked too."""
    run_dir = tmp_path_factory.mktemp("schema") / "run"
    assert main([*TINY, "--run-dir", str(run_dir)]) == 0
    return run_dir, json.loads((run_dir / "report.json").read_text())


def test_a_real_report_fits_the_schema(tiny_run):
    run_dir, report = tiny_run
    assert check_report(report) == []
    assert set(REQUIRED_KEYS) <= set(report)
    for key in ("latency_ms", "runtime_latency", "block_format", "plots", "training",
                "posterior_log_alpha"):  # optional, written here
        assert key in report, key
    assert report["posterior_log_alpha"]["groups"] == 784 + 300 + 100  # LeNet-300-100's input groups
    assert "of 1,184 groups" in (run_dir / "report.md").read_text()
    unknown = set(report) - set(REPORT_KEYS)  # a key added to build_report must be added to the schema too
    assert not unknown, f"report keys the schema does not name: {sorted(unknown)}"
    assert load_report(run_dir) == report


def test_required_keys_come_from_the_typeddict():
    assert set(REQUIRED_KEYS) == Report.__required_keys__
    assert set(REPORT_KEYS) == Report.__required_keys__ | Report.__optional_keys__
    for optional in ("latency_ms", "plots", "ddp", "module_b_sweep_s"):
        assert optional in REPORT_KEYS and optional not in REQUIRED_KEYS
    assert {"model", "method", "test_error_pct", "weights_kept", "compression_architecture"} <= set(REQUIRED_KEYS)


@pytest.mark.parametrize("key, value, fragment", [
    ("weights_kept", "12", "'weights_kept' is str"),
    ("weights_kept", True, "'weights_kept' is bool"),  # bool is an int in Python, never in a report
    ("test_error_pct", None, "'test_error_pct' is NoneType"),
    ("bits_per_layer", [4, "5"], "'bits_per_layer' is list"),
    ("coupled_groups", [{"root": "conv1", "channels": 16}], "'coupled_groups' is list"),  # nested TypedDict
    ("tradeoff_curve", [{"threshold": 1.0}], "'tradeoff_curve' is list"),
    ("latency_ms", [1.0], "'latency_ms' is list"),  # optional keys are checked when present
])
def test_check_report_names_a_value_of_the_wrong_type(tiny_run, key, value, fragment):
    report = dict(tiny_run[1], **{key: value})
    problems = check_report(report)
    assert len(problems) == 1 and fragment in problems[0], problems


def test_check_report_accepts_what_json_may_write(tiny_run):
    report = dict(tiny_run[1], test_error_pct=2, coupled_groups=[{"root": "c", "channels": 4, "kept": 2}],
                  test_error_pct_bayes=None, git_commit=None, my_method_extra=[1, 2])
    assert check_report(report) == []  # an int where a float is due, None where allowed, an extra method key


def test_missing_keys_and_non_objects_are_named(tiny_run):
    report = dict(tiny_run[1])
    del report["kept_architecture"]
    assert check_report(report) == ["missing key 'kept_architecture'"]
    assert check_report([1, 2]) == ["a report is a JSON object, got list"]


def test_load_report_refuses_a_wrong_type_with_a_clear_error(tiny_run, tmp_path, capsys):
    (tmp_path / "report.json").write_text(json.dumps(dict(tiny_run[1], weights_dense="many")))
    with pytest.raises(ValueError, match="'weights_dense' is str"):
        load_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "weights_dense" in err and "Traceback" not in err
    (tmp_path / "report.json").write_text("[1, 2]")
    assert main(["report", str(tmp_path)]) == 2
    assert "not a report object" in capsys.readouterr().err


def test_benchmark_contract_is_drawn_from_the_schema():
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "_common.py")
    common = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(common)  # by path: the test does not depend on the working directory
    CONTRACT, UNPUBLISHED = common.CONTRACT, common.UNPUBLISHED
    assert set(CONTRACT) | UNPUBLISHED == set(REPORT_KEYS) and not set(CONTRACT) & UNPUBLISHED
    assert UNPUBLISHED <= set(REPORT_KEYS)  # a key dropped from the schema cannot linger here


def test_posterior_log_alpha_counts_match_the_layers_parameters():
    """Counted independently from each layer's z parameters (log alpha = log sigma_z² - log mu_z²); a model
    without group statistics gives None."""
    import torch

    from bayescomp import bayesify
    from bayescomp.models import create_model
    from bayescomp.priors.base import bayesian_layers
    from bayescomp.report import posterior_log_alpha_counts

    torch.manual_seed(0)
    bayes = bayesify(create_model("lenet5", data="mnist"), "gnj")
    expected, groups = {"-3": 0, "0": 0, "3": 0}, 0
    generator = torch.Generator().manual_seed(3)
    for _, layer in bayesian_layers(bayes):
        with torch.no_grad():
            layer.z_log_sigma2.copy_(torch.empty(layer.z_log_sigma2.shape).uniform_(-8.0, 6.0, generator=generator))
        log_alpha = layer.z_log_sigma2.detach().double() - torch.log(layer.z_mu.detach().double() ** 2)
        groups += log_alpha.numel()
        for level in expected:
            expected[level] += int((log_alpha > float(level)).sum())
    counts = posterior_log_alpha_counts(bayes)
    assert counts == {"groups": groups, "above": expected}
    assert 0 < expected["3"] < expected["0"] < expected["-3"] < groups
    assert posterior_log_alpha_counts(create_model("lenet5", data="mnist")) is None
