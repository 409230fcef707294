"""What the study machinery costs: cifartune against plain Ray Tune on the same tiny trials.

    python -m benchmarks.overhead [--sizes 20 100 500] [--s3-sizes 20 100] [--out DIR]

Each size N runs N random-search trials of tiny work (64 training images of the bundled slice,
2 epochs, 1 CPU each, as many at once as the machine has CPUs, checkpoint every epoch) twice,
in one Ray runtime: through cifartune's study driver (``run_study``, in this process, so its
callback can be timed) and through plain Ray Tune 2.60 with ``reuse_actors=True`` and a function
trainable that only sleeps for cifartune's measured epoch times and reports. Then the same
cifartune study on an S3 server on loopback (moto), counting the requests the server answered.

Printed and written to ``DIR/overhead.json``, per run: wall seconds, trials per minute,
per-trial overhead (wall minus the epochs' own time, per trial per slot), its marginal value
(the same between this size and the last smaller one: without the study's fixed start and end),
driver seconds per event (time in cifartune's Ray callback, per callback call) and, on S3,
requests per event.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

TINY = {
    "epochs": 2,
    "batch_size": 32,
    "data": {"source": "bundled", "train_subset": 64, "val_size": 100},
}
HOOKS = ("on_trial_result", "on_trial_start", "on_trial_complete", "on_trial_error",
         "on_trial_recover", "on_experiment_end")  # fmt: skip


def tiny_spec(name: str, trials: int, slots: int, storage: str) -> Any:
    from cifartune.config.resolved import resolve
    from cifartune.config.validation import build_spec

    return resolve(
        build_spec(
            {
                "name": name,
                "base": TINY,
                "space": {"optim.lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}},
                "search": {"algorithm": "random", "samples": trials, "seed": 0},
                "resources": {"cpus": 1, "max_concurrent": slots},
                "checkpoint": {"every": 1},
                "storage": storage,
            }
        )
    )


class CallbackClock:
    """Wraps StudyCallback's hooks to count calls and the seconds spent in them."""

    def __init__(self) -> None:
        from cifartune.study.callback import StudyCallback

        self.calls, self.seconds = 0, 0.0
        self._originals = {name: getattr(StudyCallback, name) for name in HOOKS}
        for name, original in self._originals.items():
            setattr(StudyCallback, name, self._timed(original))

    def _timed(self, original: Any) -> Any:
        def hook(callback: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(callback, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return hook

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0


def run_cifartune(spec: Any, clock: CallbackClock) -> dict[str, Any]:
    from cifartune.store.study_data import read_study
    from cifartune.study.driver import run_study

    clock.reset()
    start = time.perf_counter()
    outcome = run_study(spec)
    wall = time.perf_counter() - start
    study = read_study(outcome.directory)
    assert outcome.state == "completed", outcome.state
    return {
        "wall_s": wall,
        "training_s": float(study.epochs["time/epoch_s"].sum()),
        "epoch_s": float(study.epochs["time/epoch_s"].median()),
        "events": clock.calls,
        "driver_s": clock.seconds,
    }


def run_plain_ray(trials: int, slots: int, epoch_s: float, storage: Path) -> dict[str, Any]:
    """Plain Ray Tune with the same trials, resources and epochs: a trainable that sleeps."""
    from ray import tune

    def trainable(config: dict[str, Any]) -> None:
        for epoch in range(1, TINY["epochs"] + 1):
            time.sleep(epoch_s)
            tune.report({"epoch": epoch, "val/top1": config["lr"] * epoch})

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"lr": tune.loguniform(1e-3, 0.1)},
        tune_config=tune.TuneConfig(
            metric="val/top1",
            mode="max",
            num_samples=trials,
            max_concurrent_trials=slots,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=str(storage), name="plain", verbose=0),
    )
    start = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - start
    return {"wall_s": wall, "training_s": trials * TINY["epochs"] * epoch_s, "epoch_s": epoch_s}


def summarize(run: dict[str, Any], trials: int, slots: int) -> dict[str, Any]:
    overhead = (run["wall_s"] - run["training_s"] / slots) / trials * slots
    out = {**run, "trials": trials, "slots": slots, "overhead_per_trial_s": overhead,
           "trials_per_min": 60 * trials / run["wall_s"]}  # fmt: skip
    if run.get("events"):
        out["driver_s_per_event"] = run["driver_s"] / run["events"]
    if "requests" in run:
        out["requests_per_event"] = run["requests"] / run["events"]
    return out


def marginal(smaller: dict[str, Any], larger: dict[str, Any], slots: int) -> float:
    """Overhead per trial per slot between two sizes of one kind of run: what one more trial
    costs, once the study's start (Ray's, the trial processes' imports) and end are paid."""
    wall = larger["wall_s"] - smaller["wall_s"]
    training = (larger["training_s"] - smaller["training_s"]) / slots
    return (wall - training) / (larger["trials"] - smaller["trials"]) * slots


class S3Server:
    """moto's S3 server on loopback; it logs one line per request it answers."""

    def __init__(self, log: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.log = log
        self.endpoint = f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )
        os.environ.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        for _ in range(120):
            try:
                urllib.request.urlopen(self.endpoint, timeout=2).close()
                break
            except OSError:
                time.sleep(0.5)
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/bench", method="PUT"))

    def requests(self) -> int:
        return len(re.findall(r'" \d{3} ', self.log.read_text()))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # inherited by every Ray start below
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[20, 100, 500])
    parser.add_argument("--s3-sizes", type=int, nargs="*", default=[20, 100])
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("overhead-results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="overhead-") as work:
        return measure(args, Path(work))


def measure(args: argparse.Namespace, work: Path) -> int:
    """Each size through cifartune and plain Ray Tune, then on S3, in `work` (the studies and
    the S3 server's log); prints a line per run and writes ``overhead.json`` into ``--out``."""
    # The S3 server and its variables come first: every Ray process inherits them.
    s3 = S3Server(work / "moto.log") if args.s3_sizes else None
    import ray

    ray.init(address="local", num_cpus=args.slots, include_dashboard=False, log_to_driver=False)
    clock = CallbackClock()
    results: list[dict[str, Any]] = []

    def record(kind: str, run: dict[str, Any], trials: int) -> None:
        row = {"kind": kind, **summarize(run, trials, args.slots)}
        smaller = [r for r in results if r["kind"] == kind]
        if smaller:  # the slope from the last smaller size: per trial, without fixed costs
            row["marginal_overhead_per_trial_s"] = marginal(smaller[-1], row, args.slots)
        results.append(row)
        line = (
            f"{kind:<16} N={trials:<4} wall {row['wall_s']:7.1f} s  "
            f"{row['trials_per_min']:6.1f} trials/min  overhead {row['overhead_per_trial_s']:.3f} "
            "s/trial/slot"
        )
        if "marginal_overhead_per_trial_s" in row:
            line += f" (marginal {row['marginal_overhead_per_trial_s']:.3f})"
        if "driver_s_per_event" in row:
            line += f"  driver {1000 * row['driver_s_per_event']:.2f} ms/event ({row['events']})"
        if "requests_per_event" in row:
            line += f"  S3 {row['requests_per_event']:.1f} requests/event"
        print(line, flush=True)
        (args.out / "overhead.json").write_text(json.dumps(results, indent=2))

    try:
        for n in args.sizes:
            run = run_cifartune(tiny_spec(f"local{n}", n, args.slots, str(work)), clock)
            record("cifartune", run, n)
            record("ray-tune", run_plain_ray(n, args.slots, run["epoch_s"], work / f"p{n}"), n)
        for n in args.s3_sizes:
            assert s3 is not None
            before = s3.requests()
            run = run_cifartune(tiny_spec(f"s3-{n}", n, args.slots, "s3://bench/r"), clock)
            run["requests"] = s3.requests() - before
            record("cifartune-s3", run, n)
    finally:
        ray.shutdown()
        if s3 is not None:
            s3.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
