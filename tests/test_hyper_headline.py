"""The README's hypernetwork sentence describes the compressor behind the headline, found by its file's digest."""

from __future__ import annotations

import json

import pytest

from benchmarks import make_tables
from benchmarks._common import headline_equal_error


def _write(path, record):
    path.write_text(json.dumps(record))


def _equal_error(digest: str | None, no_larger: int, with_bits: int) -> dict:
    record = {"summary": {"contexts": 50, "contexts_generated_no_larger": no_larger,
                          "contexts_generated_no_larger_with_bits": with_bits,
                          "median_generated_compression_bits": 400.0,
                          "median_unconditional_compression_bits": 150.0}}
    if digest is not None:
        record["hypernetwork_sha256"] = digest
    return record


@pytest.fixture()
def results(tmp_path, monkeypatch):
    monkeypatch.setattr(make_tables, "RESULTS", tmp_path)
    return tmp_path


def test_the_equal_error_file_of_the_headline_compressor_is_chosen_by_digest(results):
    _write(results / "lenet5_mnist_hyper.json", {"hypernetwork": {"sha256": "b" * 64}})
    _write(results / "hyper_equal_error_lenet5_mnist.json", _equal_error(None, 47, 10))
    _write(results / "hyper_equal_error_lenet5_mnist_other.json", _equal_error("a" * 64, 20, 5))
    _write(results / "hyper_equal_error_lenet5_mnist_seed1.json", _equal_error("b" * 64, 49, 48))
    assert headline_equal_error("mnist", results)["summary"]["contexts_generated_no_larger"] == 49
    sentence = make_tables._equal_error_sentence()
    assert "49 of 50 contexts on MNIST" in sentence and "48 of 50 on MNIST" in sentence
    assert "47 of 50" not in sentence and make_tables._hyper_bits_sentence() == ""


def test_no_file_of_the_headline_compressor_means_no_claim(results):
    _write(results / "lenet5_mnist_hyper.json", {"hypernetwork": {"sha256": "b" * 64}})
    _write(results / "hyper_equal_error_lenet5_mnist.json", _equal_error(None, 47, 10))
    assert headline_equal_error("mnist", results) is None
    assert make_tables._equal_error_sentence() == ""


def test_a_headline_without_digest_keeps_the_untagged_comparison(results):
    _write(results / "lenet5_mnist_hyper.json", {"hypernetwork": {}})
    _write(results / "hyper_equal_error_lenet5_mnist.json", _equal_error(None, 47, 10))
    _write(results / "hyper_bits_lenet5_mnist.json", {"summary": {"median_compression_bits": 132.9,
                                                                  "median_unconditional_compression_bits": 104.4}})
    sentence = make_tables._equal_error_sentence()
    assert "47 of 50 contexts on MNIST" in sentence and "with the bit widths of both" not in sentence
    assert "133x" in make_tables._hyper_bits_sentence()


def test_the_acceptance_row_needs_every_context_in_weights_and_bits_and_equal_epochs(results):
    from benchmarks.acceptance import _hyper_rows

    def rows_for(no_larger, with_bits, epochs):
        _write(results / "lenet5_mnist_hyper.json", {"hypernetwork": {"sha256": "b" * 64}, "hypernetwork_epochs": 30})
        record = _equal_error("b" * 64, no_larger, with_bits)
        record.update(unconditional_epochs=epochs)
        _write(results / "hyper_equal_error_lenet5_mnist_s1.json", record)
        out = []
        _hyper_rows(lambda target, measured, ok: out.append((measured, ok)), results)
        return out

    (measured, ok), = rows_for(50, 50, 30)
    assert ok is True and "50 of 50 contexts in weights, 50 with bits" in measured
    assert rows_for(50, 49, 30)[0][1] is False
    assert rows_for(49, 50, 30)[0][1] is False
    assert rows_for(50, 50, 90)[0][1] is False
