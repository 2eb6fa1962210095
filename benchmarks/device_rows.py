"""Several blind Table 1 reruns (``benchmarks/blind_row.py``) at once on one accelerator, inside a wall-clock budget.

The LeNet-5 rows need the paper's 200-epoch schedule (issue 20, item 2), which takes hours per run on two CPU
cores; an accelerator lent for minutes fits several when they share it. Each job is one ``blind_row`` process
(``--device``); they run side by side and each checkpoints every epoch in its own ``runs/blind/...`` directory.

The budget is kept by a rule fixed here, never by looking at results: every ``--check-s`` seconds the Bayesian
epoch rate of each training job is read from its log; if, at the summed rate, the jobs in priority order (the
order given) cannot all finish their remaining epochs plus ``--post-s`` seconds of pruning and fine-tuning before
the horizon (``--horizon-s``, by default the deadline), the lowest-priority jobs are stopped (their checkpoints stay, to be resumed by the same command
later). At the deadline every job still running is stopped. Optional ``--canary`` jobs (one epoch, one tolerance,
``--tag canary``) run first-thing beside them: if one fails, everything stops at once, so a fault in the
post-training path costs a minute, not the budget.

    python -m benchmarks.device_rows --device cuda --mps --job-args=--cuda-graphs --budget-s 540 --out /tmp/out \\
        --jobs "lenet5 gnj 200 0" "lenet5 ghs 200 0" --canary gnj ghs

With ``--job-args=--cuda-graphs`` each Bayesian step is one CUDA graph (:mod:`bayescomp.cuda_graphs`): on one H200 a
LeNet-5 epoch took 1.1 s (BC-GNJ) instead of 5.0 s, so a 200-epoch run trains in about four minutes; the pruning
search and fine-tuning after it take another two to four (``benchmarks/results/device_rows_lenet5_h200.md``).

A job on a CIFAR-10 model (``"resnet20 gnj 30 0 --pretrained --finetune-epochs 40"``) runs ``benchmarks.cifar_runs``
with the given setting instead; CIFAR-10 does not fit one call, so it is staged first over several calls
(``benchmarks/device_stage.py``) and ``$BAYESCOMP_DATA`` points at where it was joined.

``--out`` receives ``results.tar.gz`` (new files under ``benchmarks/results``, ``runs/device_logs``: the jobs' logs
and the driver's record) and,
for each job stopped before its end, ``ckpt_<job>.tar`` (its ``bayes.ckpt`` and ``run.json``), so the run can
continue elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks._common import RESULTS

#: Models whose jobs run ``benchmarks.cifar_runs`` (CIFAR-10 staged by ``benchmarks.device_stage``) instead of
#: ``blind_row``: extra job words go to it (e.g. ``--pretrained --target-macs 2 --finetune-epochs 40``).
CIFAR_MODELS = ("resnet20", "resnet56", "vgg16")
EPOCH = re.compile(r"^epoch\s+(\d+)/(\d+)\s.*\((\d+(?:\.\d+)?)s\)")


@dataclass
class Job:
    """One ``blind_row`` process: ``model method epochs seed`` (and extra arguments)."""

    model: str
    method: str
    epochs: int
    seed: int
    extra: list[str] = field(default_factory=list)
    canary: bool = False
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    first_epoch: tuple[float, int] | None = None  # (time, epoch) of the first Bayesian epoch line seen
    last_epoch: tuple[float, int] | None = None
    epoch_seconds: list[float] = field(default_factory=list)  # each Bayesian epoch's own time, from its log line
    stopped: str = ""  # why the driver stopped it ("" if it ran to its end)

    @property
    def name(self) -> str:
        suffix = "_canary" if self.canary else (f"_seed{self.seed}" if self.seed else "")
        return f"{self.model}_{self.method}_{self.epochs}{suffix}"

    @property
    def run_dir(self) -> Path:
        return Path("runs/blind") / self.name

    def command(self, device: str, common: list[str] = ()) -> list[str]:
        if self.model in CIFAR_MODELS:  # a CIFAR-10 run (benchmarks/cifar_runs.py): its setting is given, not searched
            if self.seed or self.canary:
                raise SystemExit(f"{self.name}: CIFAR-10 jobs take seed 0 and no canary (cifar_runs has neither)")
            return [sys.executable, "-m", "benchmarks.cifar_runs", "--model", self.model, "--method", self.method,
                    "--epochs", str(self.epochs), "--run-dir", str(self.run_dir), "--device", device, *common,
                    *self.extra]
        cmd = [sys.executable, "-m", "benchmarks.blind_row", "--model", self.model, "--method", self.method,
               "--epochs", str(self.epochs), "--seed", str(self.seed), "--device", device, *common, *self.extra]
        return cmd + (["--tag", "canary", "--tolerances", "1.0"] if self.canary else [])

    def read_progress(self) -> None:
        """The latest Bayesian epoch line of its log (lines ``epoch k/<epochs>``; dense and fine-tuning epochs
        have other totals)."""
        now = time.time()
        self.epoch_seconds = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = EPOCH.match(line.strip())
            if match and int(match.group(2)) == self.epochs:
                epoch = int(match.group(1))
                self.epoch_seconds.append(float(match.group(3)))
                if self.first_epoch is None:
                    self.first_epoch = (now, epoch)
                if self.last_epoch is None or epoch != self.last_epoch[1]:
                    self.last_epoch = (now, epoch)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rate(self) -> float | None:
        """Bayesian epochs per second since its first epoch line (None until two distinct readings)."""
        if self.first_epoch is None or self.last_epoch is None or self.last_epoch[1] <= self.first_epoch[1]:
            return None
        return (self.last_epoch[1] - self.first_epoch[1]) / max(self.last_epoch[0] - self.first_epoch[0], 1e-6)

    def remaining_epochs(self) -> int:
        return self.epochs - (self.last_epoch[1] if self.last_epoch else 0)

    def stop(self, why: str) -> None:
        if self.running:
            self.stopped = why
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def parse_job(text: str) -> Job:
    parts = text.split()
    if len(parts) < 4:
        raise SystemExit(f"a job is 'model method epochs seed [extra blind_row arguments]', got {text!r}")
    return Job(parts[0], parts[1], int(parts[2]), int(parts[3]), parts[4:])


def jobs_that_fit(training: list[Job], seconds_left: float) -> int:
    """How many of ``training`` (in priority order) finish in ``seconds_left`` if they share the summed epoch rate
    of all of them (the accelerator is the shared resource); all of them if each finishes at its own rate."""
    rates = [job.rate() for job in training]
    if any(rate is None for rate in rates):
        return len(training)
    if all(job.remaining_epochs() / rate <= seconds_left for job, rate in zip(training, rates)):
        return len(training)
    total_rate, needed = sum(rates), 0.0
    for count, job in enumerate(training):
        needed += job.remaining_epochs()
        if needed / total_rate > seconds_left:
            return count
    return len(training)


def pack(jobs: list[Job], out: Path, started: float, record: dict) -> None:
    """results.tar.gz (new result files, logs, the record) and a checkpoint tar for every job stopped early."""
    out.mkdir(parents=True, exist_ok=True)
    logs = jobs[0].log_path.parent
    (logs / "device_rows.json").write_text(json.dumps(record, indent=2))
    with tarfile.open(out / "results.tar.gz", "w:gz") as tar:  # one file: the way back takes at most eight
        for path in sorted(RESULTS.iterdir()):
            if path.is_file() and path.stat().st_mtime >= started and "canary" not in path.name:
                tar.add(path)
        for path in sorted(logs.iterdir()):  # the jobs' logs, the record, anything a wrapper left there
            tar.add(path, arcname=f"logs/{path.name}")
    for job in jobs:
        if job.stopped and not job.canary and (job.run_dir / "bayes.ckpt").exists():
            with tarfile.open(out / f"ckpt_{job.name}.tar", "w") as tar:
                for name in ("bayes.ckpt", "run.json"):
                    if (job.run_dir / name).exists():
                        tar.add(job.run_dir / name)


def try_mps() -> str:
    """Start the CUDA multi-process service (kernels of several processes then share the GPU at once) if it is
    installed and a CUDA call works under it within 60 s; otherwise leave it off. Returns what happened."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        return "not installed"
    if subprocess.run([control, "-d"], capture_output=True, timeout=30).returncode != 0:
        return "did not start"
    probe = [sys.executable, "-c", "import torch; print(torch.ones(2, device='cuda').sum().item())"]
    try:
        if subprocess.run(probe, capture_output=True, timeout=60).returncode == 0:
            return "on"
    except subprocess.TimeoutExpired:
        pass
    subprocess.run([control], input=b"quit\n", capture_output=True, timeout=30)
    return "failed its probe; off"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--jobs", nargs="+", required=True, metavar="'MODEL METHOD EPOCHS SEED [ARGS]'")
    parser.add_argument("--canary", nargs="*", default=[], metavar="METHOD",
                        help="methods whose one-epoch blind run (on the first job's model) must pass first")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock seconds until every job stops")
    parser.add_argument("--horizon-s", type=float, default=None,
                        help="seconds the stopping rule plans for (default: --budget-s); longer when the same "
                             "command will run again on the same machine and resume the jobs")
    parser.add_argument("--post-s", type=float, default=150.0, help="seconds kept for pruning and fine-tuning")
    parser.add_argument("--check-s", type=float, default=20.0)
    parser.add_argument("--job-args", default="", help="arguments given to every job and canary (e.g. --cuda-graphs)")
    parser.add_argument("--mps", action="store_true", help="try the CUDA multi-process service first")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    started = time.time()
    deadline = started + args.budget_s
    horizon = started + (args.horizon_s or args.budget_s)
    mps = try_mps() if args.mps else "not asked"
    print(f"MPS: {mps}", flush=True)
    jobs = [parse_job(text) for text in args.jobs]
    canaries = [Job(jobs[0].model, method, 1, 0, canary=True) for method in args.canary]
    logs = Path("runs/device_logs")
    logs.mkdir(parents=True, exist_ok=True)  # a wrapper may have left its own log here (packed too)
    for job in canaries + jobs:
        job.log_path = logs / f"{job.name}.log"
        with job.log_path.open("w") as log:
            job.process = subprocess.Popen(job.command(args.device, args.job_args.split()), stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    events = []
    while any(job.running for job in jobs) and time.time() < deadline:
        time.sleep(args.check_s)
        for job in canaries + jobs:
            job.read_progress()
        failed = [c for c in canaries if c.process.poll() not in (None, 0)]
        if failed:
            events.append(f"canary {failed[0].name} failed: every job stopped")
            for job in canaries + jobs:
                job.stop("a canary failed")
            break
        training = [job for job in jobs if job.running and job.remaining_epochs() > 0]
        keep = jobs_that_fit(training, horizon - time.time() - args.post_s)
        for job in training[keep:]:
            events.append(f"{time.time() - started:.0f}s: stopped {job.name} at epoch "
                          f"{job.last_epoch[1] if job.last_epoch else 0} (the jobs before it would not finish)")
            job.stop("would not finish in the budget")
        status = ", ".join(f"{job.name}: {job.last_epoch[1] if job.last_epoch else '-'}"
                           + ("" if job.running else f" ({'exit ' + str(job.process.returncode)})")
                           for job in jobs)
        print(f"{time.time() - started:5.0f}s  {status}", flush=True)
    for job in canaries + jobs:
        job.stop("deadline")
    record = {"device": args.device, "mps": mps, "budget_s": args.budget_s, "events": events,
              "wall_time_s": time.time() - started,
              "jobs": [{"name": job.name, "command": " ".join(job.command(args.device, args.job_args.split())[1:]),
                        "returncode": job.process.returncode, "stopped": job.stopped,
                        "last_epoch": job.last_epoch[1] if job.last_epoch else None, "canary": job.canary,
                        "median_epoch_s": statistics.median(job.epoch_seconds) if job.epoch_seconds else None}
                       for job in canaries + jobs]}
    print(json.dumps(record, indent=2), flush=True)
    for job in canaries + jobs:
        if job.process.returncode not in (0, None) and not job.stopped:
            print(f"--- {job.name} (exit {job.process.returncode}), log tail:\n"
                  + "\n".join(job.log_path.read_text(errors="replace").splitlines()[-25:]), flush=True)
    pack(canaries + jobs, args.out, started, record)


if __name__ == "__main__":
    main()
