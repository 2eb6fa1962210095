"""Every ``--help`` of the command line states real defaults, each exactly once (issue 19, item 7).

The help of every parser and subparser is rendered (wide, so that no text wraps), cut into one block per option,
and read like a user would: no ``(default: None)``, no option whose default shows up twice, every option with a
value default states it, and a per-model default lists what a run of each model really starts with.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from bayescomp.cli import build_parser
from bayescomp.hyper.pipeline import HyperRunConfig
from bayescomp.models import MODELS
from bayescomp.run_config import RunConfig


def _parsers(parser: argparse.ArgumentParser, path: str = "bayescomp") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """``bayescomp`` and every (nested) subcommand's parser, with the command that shows its help."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def _option_blocks(text: str) -> dict[str, str]:
    """Formatted help -> {first line's invocation: the whole entry}; an entry starts at an indent of 2 to 4."""
    blocks: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if re.match(r"^ {2,4}\S", line):
            current = line.split()[0]
            blocks[current] = line
        elif current is not None and line.startswith(" " * 5):
            blocks[current] += " " + line.strip()
        else:
            current = None
    return blocks


@pytest.fixture(scope="module")
def helps(request) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Command -> (its parser, its --help text at 2000 columns: one line per option entry)."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setenv("COLUMNS", "2000")
    request.addfinalizer(monkeypatch.undo)
    return {command: (parser, parser.format_help()) for command, parser in _parsers(build_parser())}


def test_every_subcommand_is_checked(helps):
    expected = {"bayescomp", "bayescomp run", "bayescomp report", "bayescomp export", "bayescomp hyper",
                "bayescomp hyper train", "bayescomp hyper generate", "bayescomp data", "bayescomp data download",
                "bayescomp bench"}
    assert expected <= set(helps)


def test_no_help_prints_a_placeholder_default(helps):
    for command, (_, text) in helps.items():
        flat = " ".join(text.split())
        for placeholder in ("(default: None)", "(default: [])", "(default: SUPPRESS)", "(default: ==SUPPRESS==)"):
            assert placeholder not in flat, f"`{command} --help` prints {placeholder}"


def test_no_option_states_its_default_twice(helps):
    for command, (_, text) in helps.items():
        for option, block in _option_blocks(text).items():
            count = len(re.findall(r"\bdefault\b", block, flags=re.IGNORECASE))
            assert count <= 1, f"`{command} --help`: {option} names its default {count} times: {block.strip()}"


def test_every_value_default_is_stated(helps):
    """An option whose default is a value (not None, not an off switch) says it in its help."""
    for command, (parser, text) in helps.items():
        blocks = _option_blocks(text)
        for action in parser._actions:
            default = action.default
            if not action.option_strings or default is None or isinstance(default, bool) or default == [] \
                    or default is argparse.SUPPRESS:
                continue
            block = next(b for key, b in blocks.items() if key.rstrip(",") in action.option_strings)
            assert "default" in block.lower(), f"`{command} --help`: {action.option_strings[0]} hides its default"


def _per_model(block: str) -> dict[str, str]:
    """``... (default: per model: 30 for lenet300, lenet5; 60 for vgg16)`` -> {model: "30"}."""
    found = re.search(r"default: per model: ([^)]*)\)", block)
    assert found, f"no per-model default in: {block}"
    table = {}
    for part in found.group(1).split(";"):
        value, _, models = part.strip().partition(" for ")
        table.update({model.strip(): value for model in models.split(",")})
    return table


@pytest.mark.parametrize("option,phase", [("--epochs", "bayes"), ("--dense-epochs", "dense")])
def test_per_model_epochs_match_what_a_run_uses(helps, option, phase):
    block = _option_blocks(helps["bayescomp run"][1])[option]
    shown = _per_model(block)
    assert set(shown) == set(MODELS), f"{option} lists {sorted(shown)}, the zoo has {sorted(MODELS)}"
    for model in MODELS:
        config = RunConfig(model=model, data=MODELS[model].default_data)
        assert int(shown[model]) == getattr(config, phase).epochs, f"{option} for {model}: {block}"


def test_hyper_train_defaults_are_the_run_configs():
    args = build_parser().parse_args(["hyper", "train"])
    defaults = HyperRunConfig()
    assert (args.model, args.epochs, args.lr, args.batch_size, args.kl_warmup, args.val_size) == (
        defaults.model, defaults.train.epochs, defaults.train.lr, defaults.train.batch_size,
        defaults.train.kl_warmup_epochs, defaults.val_size)
