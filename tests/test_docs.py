"""The documentation stays true: README size, generated tables in sync, links that resolve, a quickstart that runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "RESULTS.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_fits_on_a_screen_of_screens():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move details to docs/ (at most 300)"


def test_results_and_headline_table_are_generated_from_the_committed_results():
    """RESULTS.md and the README's headline rows equal what benchmarks/make_tables.py writes from the JSON."""
    done = subprocess.run([sys.executable, "-m", "benchmarks.make_tables", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_relative_links_in_the_docs_resolve():
    missing = []
    for doc in DOCS:
        for target in LINK.findall(doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (doc.parent / target).exists():
                missing.append(f"{doc.relative_to(ROOT)} -> {target}")
    assert not missing, "broken links: " + ", ".join(missing)


def _readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, f"expected one python block in README.md, found {len(blocks)}"
    return blocks[0]


def test_readme_quickstart_runs_on_a_small_subset(tmp_path, monkeypatch):
    """The README's own-model quickstart, verbatim except for a data subset and one epoch per fit, runs end to end
    and the file it saves loads back to the same outputs."""
    code = _readme_python()
    call = 'bayescomp.load_dataset("mnist")'
    assert call in code and "epochs=" in code
    code = code.replace(call, 'bayescomp.load_dataset("mnist", val_size=300, train_subset=256, test_subset=128)')
    code = re.sub(r"epochs=\d+", "epochs=1", code)
    module = tmp_path / "readme_quickstart.py"
    module.write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the README asks for classes in an importable module
    torch.manual_seed(0)
    namespace = __import__("readme_quickstart")
    try:
        x = namespace.data.test.example(8)
        with torch.no_grad():
            expected = namespace.result.quantized_model.eval()(x)
            assert torch.allclose(namespace.again(x), expected, atol=1e-5)
        assert type(namespace.again).__name__ == "SmallResNet"
        assert (tmp_path / "small.bcz").stat().st_size > 0
    finally:
        sys.modules.pop("readme_quickstart", None)


def test_readme_command_lines_parse():
    """Every ``bayescomp ...`` line in the README's shell blocks is accepted by the CLI's parser."""
    from bayescomp.cli import build_parser

    parser = build_parser()
    lines = [line.split("#")[0].split() for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(),
                                                                 flags=re.S) for line in block.splitlines()]
    commands = [words[1:] for words in lines if words and words[0] == "bayescomp" and "--help" not in words]
    assert len(commands) >= 5
    for words in commands:
        parser.parse_args(words)  # argparse exits (SystemExit) on a line it does not accept
