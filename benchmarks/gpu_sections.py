"""The sections of ``gpu_check.py``: each takes the device and the sizes, returns a JSON-able dict.

The speed sections train on a synthetic full-size uint8 training set made on the device, so
they measure steady-state throughput (start-up, allocator and compilation are in the warm-up
epoch, which is not timed); the correctness sections (precision, resume) train on real images.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TIMING = ("time/train_s", "time/epoch_s", "time/images_per_s")
Report = dict[str, Any]
# Kernel-launch entry points of the CUDA runtime and driver, as torch.profiler names them.
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaGraphLaunch", "cuGraphLaunch")


def trial_config(device: torch.device, **overrides: Any) -> Any:
    from cifartune.config.trial import build_trial_config

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


def tf32_state() -> Report:
    """What fp32 matmuls and convolutions may round to TF32 (torch's defaults: matmul no,
    cuDNN convolutions yes); the engine leaves both as torch sets them."""
    return {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def _host_synthetic(images: int) -> Any:
    """Random CIFAR-shaped host arrays for the reference loop's per-image PIL pipeline."""
    from cifartune.engine.data import CifarArrays

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, images)
    return CifarArrays(x, y, x[:0], y[:0], "synthetic")


def launches_per_step(run: Any) -> Report:
    """CUDA kernel-launch calls (CUDA-graph replays count one each) and kernels run per training
    step, over one profiled epoch of `run`."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from cifartune.engine.loop import train_one_epoch

    steps = -(-len(run.data.train_y) // run.config.batch_size)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train_one_epoch(run)
    events = prof.events()
    launches = sum(1 for e in events if e.name.startswith(LAUNCHES))
    kernels = sum(1 for e in events if e.device_type == DeviceType.CUDA)
    return {"launch_calls": round(launches / steps, 1), "gpu_kernels": round(kernels / steps, 1)}


def check_throughput(device: torch.device, size: Report) -> Report:
    """Engine (bf16 and fp32; eager, compiled, CUDA graphs) against the usual loop, img/s."""
    from benchmarks.throughput import (
        engine_config,
        measure_engine,
        measure_reference,
        synthetic_data,
    )
    from cifartune.engine.device import native_bf16

    images = size["synthetic_images"]
    data = synthetic_data(images, device)
    out: Report = {
        "data": f"synthetic uint8 (N, 3, 32, 32) made on {device}, {images} images",
        "tf32": tf32_state(),
        "native_bf16": native_bf16(device),
        "reference_workers": size["workers"],
        "median_of": size["repeats"],
    }
    for batch, count in ((128, images), (8, min(images, size["images_8"]))):
        row: Report = {"images": count}
        subset = data if count == len(data.train_y) else _head(data, count)
        for precision in ("bf16", "fp32"):
            speeds, _ = measure_engine(
                subset, engine_config(batch, precision), repeats=size["repeats"]
            )
            row[f"engine_{precision}_img_s"] = round(statistics.median(speeds), 1)
        reference = measure_reference(
            _host_synthetic(count),
            images=count,
            batch_size=batch,
            repeats=size["repeats"],
            workers=size["workers"],
            device=device,
        )
        row["reference_fp32_img_s"] = round(statistics.median(reference), 1)
        for precision in ("bf16", "fp32"):
            ratio = row[f"engine_{precision}_img_s"] / row["reference_fp32_img_s"]
            row[f"ratio_{precision}"] = round(ratio, 2)
        out[f"batch_{batch}"] = row
    out["compile"] = check_compile(data, device, size)
    return out


def _head(data: Any, count: int) -> Any:
    from cifartune.engine.splits import DeviceData

    x, y = data.train_x[:count], data.train_y[:count]
    return DeviceData(x, y, data.val_x, data.val_y, data.test_images, data.test_labels)


def check_compile(data: Any, device: torch.device, size: Report) -> Report:
    """Batch-128 img/s of the engine at its own precision with each ``compile`` option, and on
    CUDA the kernel launches per step; the warm-up epoch (not timed) holds the compilation."""
    from benchmarks.throughput import engine_config, measure_engine
    from cifartune.engine.device import resolve_precision

    precision = resolve_precision("auto", device)
    out: Report = {"precision": precision, "batch": 128}
    for mode in size["compile_modes"]:
        if mode == "cudagraphs" and device.type != "cuda":
            out[mode] = {"skipped": f"CUDA graphs apply on CUDA only (device {device})"}
            continue
        began = time.perf_counter()
        try:
            speeds, run = measure_engine(
                data, engine_config(128, precision, compile_mode=mode), repeats=size["repeats"]
            )
        except Exception as exc:  # a compiler failure is a result here, not a crash
            out[mode] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
            continue
        row: Report = {
            "img_s": round(statistics.median(speeds), 1),
            "with_warmup_s": round(time.perf_counter() - began, 1),
        }
        if device.type == "cuda":
            try:
                row["per_step"] = launches_per_step(run)
            except Exception as exc:
                row["per_step"] = {"error": f"{type(exc).__name__}: {exc}"}
        else:
            row["per_step"] = "kernel launches are a CUDA measure; none on a CPU"
        out[mode] = row
    eager = out.get("none", {}).get("img_s")
    for mode in size["compile_modes"]:
        if eager and isinstance(out[mode], dict) and "img_s" in out[mode]:
            out[mode]["vs_eager"] = round(out[mode]["img_s"] / eager, 2)
    return out


def check_precisions(arrays: Any, device: torch.device, size: Report) -> Report:
    from cifartune.engine.loop import fit

    out: Report = {}
    short = size["short_run"]
    for precision in ("fp32", "bf16"):
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
    out["epochs"] = short["epochs"]
    out["val_top1_diff"] = round(out["bf16"]["val_top1"] - out["fp32"]["val_top1"], 2)
    return out


def _round_trip(state: Report) -> Report:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded: Report = torch.load(buffer, map_location="cpu", weights_only=False)
    return loaded


def check_resume(arrays: Any, device: torch.device, size: Report) -> Report:
    from cifartune.engine.loop import fit

    config = trial_config(
        device,
        epochs=size["resume_epochs"],
        batch_size=64,
        **{
            # Explicit: the default 10% of the bundled slice (200) would leave fewer images
            # than resume_images, which sizes() caps at what this split leaves.
            "data.val_size": size["resume_val"],
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


# --- packed trials: N worker processes train at once on one device ---------------------------


def packed_worker(args: argparse.Namespace) -> None:
    """One packed trial: load, warm up, say ready, wait for the go file, time the epochs.

    Waiting ends at the deadline, or when the parent that started it is gone: a worker never
    outlives its check (each holds a CUDA context, about 0.5 GB)."""
    from benchmarks.throughput import load_data
    from cifartune.engine.loop import train_one_epoch
    from cifartune.engine.run import build_run
    from cifartune.engine.splits import to_device

    parent = os.getppid()
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
        if time.time() > args.deadline or os.getppid() != parent:
            sys.exit(f"packed worker {os.getpid()}: no go before the deadline, or parent gone")
        time.sleep(0.01)
    start = time.time()
    images = sum(
        round(m["time/images_per_s"] * m["time/train_s"])
        for m in (train_one_epoch(run) for _ in range(args.epochs))
    )
    print(json.dumps({"images": images, "start": start, "end": time.time()}))


def worker_command(
    device: torch.device, size: Report, data_dir: str | None, ready: Path, go: Path, **flags: Any
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu_check",
        "--worker",
        f"--device={device}",
        f"--worker-images={size['packed_images']}",
        f"--worker-epochs={size['packed_epochs']}",
        f"--ready={ready}",
        f"--go={go}",
        *(f"--{k.replace('_', '-')}={v}" for k, v in flags.items()),
    ]
    return command + ([f"--data-dir={data_dir}"] if data_dir else [])


def run_packed(
    commands: list[list[str]], ready: list[Path], go: Path, deadline: float
) -> list[Report]:
    """Start `commands` at once, wait until each has touched its `ready` file, touch `go`, and
    return each one's last stdout line as JSON.

    A worker that exits before it is ready or fails, or a deadline passed, ends the lot: every
    worker still running is killed before this returns or raises, so none is left spinning on
    the go file (holding its GPU context)."""
    # From the repository root, where `-m benchmarks.gpu_check` finds its package.
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, text=True, cwd=HERE.parent) for c in commands
    ]
    try:
        while not all(r.exists() for r in ready):
            dead = [p for p, r in zip(procs, ready, strict=True) if p.poll() is not None]
            if dead:
                raise RuntimeError(
                    f"packed trial process {dead[0].pid} exited {dead[0].returncode} before it "
                    f"was ready ({len(procs)} packed); its siblings were stopped"
                )
            if time.time() > deadline:
                raise TimeoutError(f"{len(procs)} packed trials not all ready before the deadline")
            time.sleep(0.05)
        go.touch()
        results = []
        for p in procs:
            stdout, _ = p.communicate(timeout=max(1.0, deadline - time.time()))
            if p.returncode != 0:
                raise RuntimeError(f"a packed trial process exited with {p.returncode}")
            results.append(json.loads(stdout.strip().splitlines()[-1]))
        return results
    finally:
        _stop(procs)


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGKILL)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.communicate(timeout=30)


def check_packing(device: torch.device, size: Report, data_dir: str | None) -> Report:
    out: Report = {"images_per_trial_epoch": size["packed_images"], "epochs": size["packed_epochs"]}
    for n in size["packed"]:
        with tempfile.TemporaryDirectory() as tmp:
            go, ready = Path(tmp) / "go", [Path(tmp) / f"ready-{i}" for i in range(n)]
            deadline = time.time() + size["packed_deadline_s"]
            threads = max(1, (os.cpu_count() or 1) // n)
            commands = [
                worker_command(device, size, data_dir, r, go, threads=threads, deadline=deadline)
                for r in ready
            ]
            results = run_packed(commands, ready, go, deadline)
        wall = max(r["end"] for r in results) - min(r["start"] for r in results)
        total = sum(r["images"] for r in results)
        out[str(n)] = {"aggregate_img_s": round(total / wall, 1), "wall_s": round(wall, 2)}
    return out
