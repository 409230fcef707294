"""One-command check of the engine on a GPU (or, with ``--device cpu``, on any CPU).

    python -m benchmarks.gpu_check [--device auto|cuda|cpu] [--quick]
        [--images N] [--data-dir MIRROR] [--out DIR] [--no-ray]

Writes ``gpu_check.json`` (rewritten after every section, so a check cut short keeps what it
finished) and a short ``gpu_check.md`` to ``--out``:

- device, Python, torch, CUDA and cuDNN versions;
- throughput: images/s of the engine in bf16 and in fp32 against the usual loop (per-image
  torchvision transforms through a DataLoader, fp32, cuDNN autotuning on: ``throughput.py``'s
  reference) at batch 128 and batch 8, on a synthetic full-size training set made on the
  device (45,000 uint8 images; the warm-up epoch is not timed), with the TF32 settings; and
  the engine with each ``compile`` option (eager, torch.compile, CUDA graphs) with, on CUDA,
  the kernel launches per training step;
- validation accuracy of the same short run in bf16 and in fp32 (real images);
- the resume check: a run resumed from its epoch-1 checkpoint (saved and loaded as a file)
  repeats the uninterrupted run's metrics exactly; on CUDA the checkpoint also resumes on the CPU;
- aggregate images/s with 1, 2, 4, 8 trials packed on the device, each its own process (a
  worker that dies, or a deadline passed, stops them all);
- a Ray Tune smoke study through ``cifartune run`` (trials per minute, per-trial start-up), or a
  note saying why it was skipped (Ray not importable, or ``--no-ray``).

Sizes: full (a GPU in about 3 minutes without Ray), ``--quick`` (CI's CPU in about a minute),
and ``--images N`` caps every image count of either at N (a test runs full mode small).
Data for the real-image sections: ``--data-dir`` (a mirror directory with train.npz/test.npz),
else the bundled slice (2,000 train images). Each section that fails records its error and the
others still run; the exit status is 1 when any section failed, 2 when the project cannot be
imported at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
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


def sizes(quick: bool, device: torch.device, train_images: int, cap: int | None = None) -> Report:
    """Work per section: `quick` fits CI's CPU in about a minute, the full set one GPU in about
    3 minutes (Ray aside). `cap` (``--images``) bounds every image count. The real-image
    sections are capped at what the `train_images` of the data leave after their validation
    split (the bundled slice has 2,000)."""
    size = _quick_sizes() if quick else _full_sizes(device)
    if cap is not None:
        for key in ("synthetic_images", "images_8", "packed_images", "resume_images"):
            size[key] = min(size[key], cap)
        size["short_run"]["train_subset"] = min(size["short_run"]["train_subset"] or cap, cap)
    if size["short_run"]["train_subset"] is not None:  # default validation split: 10%
        left = train_images - train_images // 10
        size["short_run"]["train_subset"] = min(size["short_run"]["train_subset"], left)
    size["packed_images"] = min(size["packed_images"], train_images - 10)  # val_size 10
    size["resume_val"] = min(size["resume_val"], train_images // 10)
    size["resume_images"] = min(size["resume_images"], train_images - size["resume_val"])
    return size


def _quick_sizes() -> Report:
    return {
        "synthetic_images": 256,
        "images_8": 64,
        "repeats": 1,
        "workers": 1,
        "compile_modes": ["none"],  # compiling takes a CPU about a minute: full mode only
        "short_run": {"epochs": 1, "train_subset": 128, "batch_size": 32},
        "resume_epochs": 2,
        "resume_images": 256,
        "resume_val": 100,
        "packed": [1, 2],
        "packed_images": 256,
        "packed_epochs": 1,
        "packed_deadline_s": 300,
        "ray_trials": 2,
    }


def _full_sizes(device: torch.device) -> Report:
    cuda = device.type == "cuda"
    return {
        # CIFAR-10's training split: what a trial trains on. A CPU, compute-bound from the first
        # batch, measures the same speed on fewer (and 45,000 would take it an hour here).
        "synthetic_images": 45_000 if cuda else 5_000,
        # Batch 8 is launch-bound: its speed per image does not depend on the set's size.
        "images_8": 10_000 if cuda else 1_000,
        "repeats": 3,
        "workers": min(8, os.cpu_count() or 2),
        "compile_modes": ["none", "model", "cudagraphs"],
        "short_run": {"epochs": 8, "train_subset": None, "batch_size": 128},
        "resume_epochs": 3,
        "resume_images": 5_000,
        "resume_val": 1_000,
        # Trial processes sharing the device; on a CPU, more of them than cores measures only
        # their contention (and 8 torch imports on 2 cores took a minute of the check).
        "packed": [n for n in (1, 2, 4, 8) if cuda or n <= (os.cpu_count() or 1)],
        "packed_images": 10_000,
        "packed_epochs": 4,
        "packed_deadline_s": 600,
        "ray_trials": 8 if cuda else 4,
    }


def check_ray(device: torch.device, size: Report, data_dir: str | None, out_dir: Path) -> Report:
    """A small grid study through ``cifartune run`` (Ray Tune), timed from the outside."""
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        return {"skipped": f"ray is not importable here ({exc}); install Ray to run this part"}
    import pandas as pd
    import yaml

    from cifartune.store.tables import seconds_between

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
    # Both times are UTC timestamps in the Parquet files.
    first = epochs.sort_values("epoch").groupby("trial_id").first()
    began = first["time/ended_at"] - pd.to_timedelta(first["time/epoch_s"], unit="s")
    startup = seconds_between(began, table.set_index("trial_id")["started_at"].reindex(first.index))
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
        f"{report.get('wall_s')} s in all{' (quick)' if report['quick'] else ''}"
    )
    lines.append("")
    speed = report["sections"].get("throughput", {})
    rows = [(k, speed[k]) for k in ("batch_128", "batch_8") if k in speed]
    if rows:  # the numbers people look for, before the full sections
        lines += [
            "| batch | images | engine bf16 img/s | engine fp32 img/s | reference fp32 img/s |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, row in rows:
            lines.append(
                f"| {key.split('_')[1]} | {row['images']} | {row['engine_bf16_img_s']} | "
                f"{row['engine_fp32_img_s']} | {row['reference_fp32_img_s']} |"
            )
        lines.append("")
    for name, section in report["sections"].items():
        lines += [f"## {name}", "", "```json", json.dumps(section, indent=1), "```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="CI-sized: about a minute on a CPU")
    parser.add_argument("--images", type=int, help="cap every section's image count at this")
    parser.add_argument("--data-dir", help="CIFAR-10 mirror directory (default: bundled slice)")
    parser.add_argument("--out", default="gpu_check", help="directory for the JSON and Markdown")
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="skip the Ray study")
    # Internal: one packed trial process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--worker-images", "--worker-epochs", "--threads"):
        parser.add_argument(name, type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=float("inf"), help=argparse.SUPPRESS)
    parser.add_argument("--ready", help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        from benchmarks.gpu_sections import packed_worker

        args.images, args.epochs = args.worker_images, args.worker_epochs
        packed_worker(args)
        return
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report: Report = {"quick": args.quick, "versions": versions(), "sections": {}}
    try:
        from benchmarks import gpu_sections as sections
        from benchmarks.throughput import load_data
        from cifartune.engine.device import resolve_device
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
    size = sizes(args.quick, device, len(arrays.train_labels), args.images)
    report["data"] = {"dir": args.data_dir or "bundled slice", "train": len(arrays.train_labels)}
    report["sizes"] = size
    checks: dict[str, Callable[[], Report]] = {
        "throughput": lambda: sections.check_throughput(device, size),
        "precision": lambda: sections.check_precisions(arrays, device, size),
        "resume": lambda: sections.check_resume(arrays, device, size),
        "packing": lambda: sections.check_packing(device, size, args.data_dir),
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
        report["wall_s"] = round(time.perf_counter() - start, 1)
        print(f"{name}: {json.dumps(report['sections'][name])}", flush=True)
        # Rewritten after every section: a check cut short by a timeout keeps what it finished.
        (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1))
        (out_dir / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {out_dir / 'gpu_check.json'} and gpu_check.md in {report['wall_s']} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
