"""One-command check of the engine on a GPU (or, with ``--device cpu --quick``, on CI's CPU).

    PYTHONPATH=. python benchmarks/gpu_check.py [--device auto|cuda|cpu] [--quick]
        [--data-dir MIRROR] [--out DIR] [--no-ray]

Writes ``gpu_check.json`` and a short ``gpu_check.md`` to ``--out``:

- device, Python, torch and CUDA versions;
- images/s of the engine (bf16 where the device has it natively, else fp32) against the usual
  loop (per-image torchvision transforms through a DataLoader, fp32; ``throughput.py``'s
  reference) at batch 128 and batch 8;
- validation accuracy of the same short run in bf16 and in fp32;
- the resume check: a run resumed from its epoch-1 checkpoint (saved and loaded as a file)
  repeats the uninterrupted run's metrics exactly; on CUDA the checkpoint also resumes on the CPU;
- aggregate images/s with 1, 2, 4, 8 trials packed on the device, each its own process;
- a Ray Tune smoke study through ``cifartune run`` (trials per minute, per-trial start-up), or a
  note saying why it was skipped (Ray not importable, or ``--no-ray``).

Data: ``--data-dir`` (a mirror directory with train.npz/test.npz), else the bundled slice
(2,000 train images). Each section that fails records its error and the others still run; the
exit status is 1 when any section failed, 2 when the project cannot be imported at all.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TIMING = ("time/train_s", "time/epoch_s", "time/images_per_s")
Report = dict[str, Any]


def versions() -> Report:
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def sizes(quick: bool, device: torch.device, available: int) -> Report:
    """Work per section: `quick` fits CI's CPU in about a minute, the full set one GPU in < 8.
    Image counts are capped at the `available` training images (the bundled slice has 1,990
    once 10 are held out)."""
    size = _quick_sizes() if quick else _full_sizes(device)
    for key in ("images_128", "images_8", "packed_images", "resume_images"):
        size[key] = min(size[key], available)
    return size


def _quick_sizes() -> Report:
    return {
        "images_128": 256,
        "images_8": 64,
        "repeats": 1,
        "workers": 1,
        "short_run": {"epochs": 1, "train_subset": 128, "batch_size": 32},
        "resume_epochs": 2,
        "resume_images": 256,
        "packed": [1, 2],
        "packed_images": 256,
        "packed_epochs": 1,
        "ray_trials": 2,
    }


def _full_sizes(device: torch.device) -> Report:
    return {
        "images_128": 10_000,
        "images_8": 2_000,
        "repeats": 3,
        "workers": min(8, os.cpu_count() or 2),
        "short_run": {"epochs": 8, "train_subset": None, "batch_size": 128},
        "resume_epochs": 3,
        "resume_images": 5_000,
        "packed": [1, 2, 4, 8],
        "packed_images": 10_000,
        "packed_epochs": 4,
        "ray_trials": 8 if device.type == "cuda" else 4,
    }


def trial_config(device: torch.device, **overrides: Any) -> Any:
    from cifartune.config import build_trial_config

    base = {
        "device": device.type,
        "data.source": "bundled",  # the arrays are passed in; keeps validation offline
        "data.augment": "crop+flip",
        "data.normalize": "standardize",
        "optim.name": "momentum",
        "optim.lr": 0.02,
        "optim.weight_decay": 5e-4,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    return build_trial_config({}, base)


def check_throughput(arrays: Any, device: torch.device, size: Report) -> Report:
    from throughput import measure_engine, measure_reference

    from cifartune.engine import resolve_precision

    precision = resolve_precision("auto", device)
    out: Report = {"engine_precision": precision, "reference_workers": size["workers"]}
    for batch, images in ((128, size["images_128"]), (8, size["images_8"])):
        common = {"images": images, "batch_size": batch, "repeats": size["repeats"]}
        engine = statistics.median(
            measure_engine(arrays, **common, device=device, precision=precision)
        )
        reference = statistics.median(
            measure_reference(arrays, **common, workers=size["workers"], device=device)
        )
        out[f"batch_{batch}"] = {
            "images": images,
            "engine_img_s": round(engine, 1),
            "reference_img_s": round(reference, 1),
            "ratio": round(engine / reference, 2),
        }
    return out


def check_precisions(arrays: Any, device: torch.device, size: Report) -> Report:
    from cifartune.engine import fit

    out: Report = {}
    for precision in ("fp32", "bf16"):
        short = size["short_run"]
        config = trial_config(
            device,
            precision=precision,
            epochs=short["epochs"],
            batch_size=short["batch_size"],
            **{"data.train_subset": short["train_subset"]},
        )
        start = time.perf_counter()
        last = fit(config, arrays).history[-1]
        out[precision] = {
            "val_top1": round(last["val/top1"], 2),
            "val_loss": round(last["val/loss"], 4),
            "train_loss": round(last["train/loss"], 4),
            "seconds": round(time.perf_counter() - start, 1),
        }
    out["epochs"] = size["short_run"]["epochs"]
    out["val_top1_diff"] = round(out["bf16"]["val_top1"] - out["fp32"]["val_top1"], 2)
    return out


def _round_trip(state: Report) -> Report:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: Report = torch.load(buffer, map_location="cpu", weights_only=False)
    return loaded


def check_resume(arrays: Any, device: torch.device, size: Report) -> Report:
    from cifartune.engine import fit

    config = trial_config(
        device,
        epochs=size["resume_epochs"],
        batch_size=64,
        **{
            "data.train_subset": size["resume_images"],
            "data.augment": "crop+flip+cutout",
            "model.dropout": 0.3,
        },
    )
    states: dict[int, Report] = {}

    def keep(metrics: Report, thunk: Callable[[], Report]) -> None:
        states[metrics["epoch"]] = thunk()

    full = fit(config, arrays, report=keep)
    checkpoint = _round_trip(states[1])
    resumed = fit(config, arrays, resume=checkpoint)

    def metrics(history: list[Report]) -> list[Report]:
        return [{k: v for k, v in m.items() if k not in TIMING} for m in history]

    out: Report = {
        "epochs": config.epochs,
        "exact": metrics(resumed.history) == metrics(full.history),
        "val_top1": [m["val/top1"] for m in full.history],
        "resumed_val_top1": [m["val/top1"] for m in resumed.history],
    }
    if device.type == "cuda":
        on_cpu = fit(config.model_copy(update={"device": "cpu"}), arrays, resume=checkpoint)
        out["cuda_checkpoint_resumes_on_cpu"] = on_cpu.status == "completed" and (
            len(on_cpu.history) == config.epochs
        )
    return out


def packed_worker(args: argparse.Namespace) -> None:
    """One packed trial: load, warm up, wait for the others, then time `--epochs` epochs."""
    from throughput import load_data

    from cifartune.data import to_device
    from cifartune.engine import build_run, train_one_epoch

    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    config = trial_config(
        device, batch_size=128, **{"data.train_subset": args.images, "data.val_size": 10}
    )
    run = build_run(config, to_device(load_data(args.data_dir), config.data, device))
    train_one_epoch(run)  # warm-up: allocator, cuDNN, kernels
    Path(args.ready).touch()
    while not Path(args.go).exists():
        time.sleep(0.01)
    start = time.time()
    images = sum(
        round(m["time/images_per_s"] * m["time/train_s"])
        for m in (train_one_epoch(run) for _ in range(args.epochs))
    )
    print(json.dumps({"images": images, "start": start, "end": time.time()}))


def check_packing(device: torch.device, size: Report, data_dir: str | None) -> Report:
    out: Report = {"images_per_trial_epoch": size["packed_images"], "epochs": size["packed_epochs"]}
    for n in size["packed"]:
        with tempfile.TemporaryDirectory() as tmp:
            go = Path(tmp) / "go"
            threads = max(1, (os.cpu_count() or 1) // n)
            procs = []
            for i in range(n):
                command = [
                    sys.executable,
                    __file__,
                    "--worker",
                    f"--device={device}",
                    f"--images={size['packed_images']}",
                    f"--epochs={size['packed_epochs']}",
                    f"--threads={threads}",
                    f"--ready={Path(tmp) / str(i)}",
                    f"--go={go}",
                ]
                if data_dir:
                    command.append(f"--data-dir={data_dir}")
                procs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
            while not all((Path(tmp) / str(i)).exists() for i in range(n)):
                if any(p.poll() not in (None, 0) for p in procs):
                    raise RuntimeError(f"a packed trial process failed before starting ({n})")
                time.sleep(0.05)
            go.touch()
            results = []
            for p in procs:
                stdout, _ = p.communicate(timeout=600)
                if p.returncode != 0:
                    raise RuntimeError(f"a packed trial process exited with {p.returncode}")
                results.append(json.loads(stdout.strip().splitlines()[-1]))
        wall = max(r["end"] for r in results) - min(r["start"] for r in results)
        total = sum(r["images"] for r in results)
        out[str(n)] = {"aggregate_img_s": round(total / wall, 1), "wall_s": round(wall, 2)}
    return out


def check_ray(device: torch.device, size: Report, data_dir: str | None, out_dir: Path) -> Report:
    """A small grid study through ``cifartune run`` (Ray Tune), timed from the outside."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"ray is not importable here ({exc}); install Ray to run this part"}
    import pandas as pd
    import yaml

    trials = size["ray_trials"]
    gpus = 1 / min(trials, 4) if device.type == "cuda" else 0
    lrs = [0.04 / 2**i for i in range(trials)]
    spec = {
        "name": "gpu_check_smoke",
        "base": {
            "epochs": 2,
            "batch_size": 128,
            "data": {"dir": data_dir, "train_subset": 5000} if data_dir else {"source": "bundled"},
        },
        "space": {"optim.lr": lrs},
        "search": {"algorithm": "grid"},
        "resources": {"cpus": 1, "gpus": gpus},
        "storage": str(out_dir / "ray_study"),
    }
    shutil.rmtree(out_dir / "ray_study", ignore_errors=True)  # a rerun starts its study anew
    spec_path = out_dir / "ray_smoke.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cifartune", "run", str(spec_path)],
        capture_output=True,
        text=True,
        timeout=420,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        },
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"cifartune run exited {done.returncode}: {done.stderr[-2000:]}")
    results = out_dir / "ray_study" / "gpu_check_smoke"
    table = pd.read_parquet(results / "trials.parquet")
    epochs = pd.concat(pd.read_parquet(p) for p in (results / "epochs").glob("*.parquet"))
    # From Ray starting the trial (driver clock) to its first epoch starting (trial clock, the
    # same machine here): actor, process, imports, data from the object store, model build.
    first = epochs.sort_values("epoch").groupby("trial_id").first()
    startup = (first["time/ended_at"] - first["time/epoch_s"]) - table.set_index("trial_id")[
        "started_at"
    ]
    if not len(table) or startup.isna().any():
        raise RuntimeError(f"{results}: trials.parquet and epochs/*.parquet do not match up")
    return {
        "trials": len(table),
        "gpus_per_trial": gpus,
        "wall_s": round(wall, 1),
        "trials_per_minute": round(len(table) / wall * 60, 2),
        "startup_s_median": round(float(startup.median()), 2),
        "startup_s_max": round(float(startup.max()), 2),
        "startup_note": "from Ray starting the trial to its first epoch starting: actor, "
        "process, imports, data from the object store, model build",
        "states": table["state"].value_counts().to_dict(),
    }


def markdown(report: Report) -> str:
    lines = [f"# cifartune GPU check ({report['device']})", ""]
    v = report["versions"]
    lines.append(
        f"torch {v['torch']}, CUDA {v['cuda']}, Python {v['python']}, GPU {v['gpu']}, "
        f"{report['wall_s']} s in all{' (quick)' if report['quick'] else ''}"
    )
    lines.append("")
    for name, section in report["sections"].items():
        lines.append(f"## {name}")
        lines.append("")
        lines.append("```json")
        lines.append(json.dumps(section, indent=1))
        lines.append("```")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="CI-sized: about a minute on a CPU")
    parser.add_argument("--data-dir", help="CIFAR-10 mirror directory (default: bundled slice)")
    parser.add_argument("--out", default="gpu_check", help="directory for the JSON and Markdown")
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="skip the Ray study")
    # Internal: one packed trial process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--images", "--epochs", "--threads"):
        parser.add_argument(name, type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        packed_worker(args)
        return
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: Report = {"quick": args.quick, "versions": versions(), "sections": {}}
    try:
        from throughput import load_data

        from cifartune.engine import resolve_device
    except ImportError as exc:
        # Where torch is preinstalled and no registry is reachable, the engine's own
        # dependencies (pydantic, PyYAML, numpy, Pillow for the reference) come as wheels.
        report["error"] = f"cannot import the project: {exc}; install the missing wheel"
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))
        print(report["error"], file=sys.stderr)
        sys.exit(2)
    device = resolve_device(args.device)
    report["device"] = str(device)
    arrays = load_data(args.data_dir)
    size = sizes(args.quick, device, available=len(arrays.train_labels) - 10)
    report["data"] = {"dir": args.data_dir or "bundled slice", "train": len(arrays.train_labels)}
    checks: dict[str, Callable[[], Report]] = {
        "throughput": lambda: check_throughput(arrays, device, size),
        "precision": lambda: check_precisions(arrays, device, size),
        "resume": lambda: check_resume(arrays, device, size),
        "packing": lambda: check_packing(device, size, args.data_dir),
        "ray": lambda: (
            check_ray(device, size, args.data_dir, out_dir) if args.ray else {"skipped": "--no-ray"}
        ),
    }
    start = time.perf_counter()
    failed = False
    for name, check in checks.items():
        began = time.perf_counter()
        try:
            report["sections"][name] = check()
        except Exception as exc:  # one broken section must not hide the others' numbers
            report["sections"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        report["sections"][name]["section_s"] = round(time.perf_counter() - began, 1)
        print(f"{name}: {json.dumps(report['sections'][name])}", flush=True)
    report["wall_s"] = round(time.perf_counter() - start, 1)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (out_dir / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {out_dir / 'gpu_check.json'} and gpu_check.md in {report['wall_s']} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
