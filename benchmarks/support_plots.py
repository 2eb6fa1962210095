"""Support-pattern plots for finished runs made before the plot existed (or for any run): the trained posterior is
read from the run directory, compressed with the run's own settings (before fine-tuning, which keeps the pattern),
and each layer's kept weights are drawn on its dense weight grid. Writes
``benchmarks/results/plots/<model>_<data>_<method>_support.png``::

    python -m benchmarks.support_plots runs/table1/lenet5_mnist_svd runs/table1/lenet300_mnist_svd
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from bayescomp.bayesify import bayesify
from bayescomp.checkpoint import load_checkpoint
from bayescomp.compress import compress
from bayescomp.pipeline import RunConfig, build_dense, load_data
from bayescomp.plots import plot_support_patterns
from benchmarks._common import RESULTS


def support_plot(run_dir: Path) -> Path:
    config = RunConfig.from_dict(json.loads((run_dir / "run.json").read_text()))
    data = load_data(config)
    model = bayesify(build_dense(config, data), config.method, config.prior)
    state = load_checkpoint(run_dir / "bayes.ckpt")
    if state is None:
        raise SystemExit(f"no posterior in {run_dir} (bayes.ckpt)")
    model.load_state_dict(state["model"])
    result = compress(model, data.val, config.compress)
    path = RESULTS / "plots" / f"{config.model}_{config.data}_{config.method}_support.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    return plot_support_patterns(result, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path)
    for run_dir in parser.parse_args().run_dirs:
        print("wrote", support_plot(run_dir))


if __name__ == "__main__":
    main()
