import json
import os
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import gpu_sections

from ..support import REPO


def _gpu_check(tmp_path, *args):
    """benchmarks/gpu_check.py on the CPU, where a `ray` package that fails to import stands
    for a machine without Ray: that section must be skipped with a note while the others run."""
    fake = tmp_path / "fake" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no Ray on this machine')\n")
    out = tmp_path / "out"
    path = os.pathsep.join([str(tmp_path / "fake"), str(REPO)])
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", *args, "--out", out],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "gpu_check.md").read_text().startswith("# cifartune GPU check (cpu)")
    return json.loads((out / "gpu_check.json").read_text())


def _check_common(report):
    assert report["device"] == "cpu"
    assert report["versions"]["torch"] and report["versions"]["python"]
    sections = report["sections"]
    assert set(sections) == {"throughput", "precision", "resume", "packing", "ray"}
    speed = sections["throughput"]
    assert speed["data"].startswith("synthetic uint8")
    assert set(speed["tf32"]) >= {"matmul_allow_tf32", "cudnn_allow_tf32"}
    for batch in ("batch_128", "batch_8"):
        row = speed[batch]
        for precision in ("bf16", "fp32"):
            engine, reference = row[f"engine_{precision}_img_s"], row["reference_fp32_img_s"]
            assert engine > 0 and reference > 0
            assert row[f"ratio_{precision}"] == pytest.approx(engine / reference, abs=0.01)
    assert speed["compile"]["none"]["img_s"] > 0
    for precision in ("fp32", "bf16"):
        assert 0 <= sections["precision"][precision]["val_top1"] <= 100
    assert abs(sections["precision"]["val_top1_diff"]) < 10
    assert sections["resume"]["exact"] is True
    assert "no Ray on this machine" in sections["ray"]["skipped"]
    return sections


@pytest.mark.slow
def test_gpu_check_quick_cpu_mode_writes_its_report(tmp_path):
    report = _gpu_check(tmp_path, "--quick")
    assert report["quick"] is True
    sections = _check_common(report)
    assert {"1", "2"} <= set(sections["packing"])
    assert all(sections["packing"][n]["aggregate_img_s"] > 0 for n in ("1", "2"))


@pytest.mark.slow
def test_gpu_check_full_mode_runs_on_the_bundled_slice(tmp_path):
    # Full mode, every section, its image counts capped: the bundled slice's 2,000 images
    # once held a 1,990-image resume subset against a 200-image validation split (DataError).
    report = _gpu_check(tmp_path, "--images", "128")
    assert report["quick"] is False and report["sizes"]["resume_images"] == 128
    sections = _check_common(report)
    assert sections["throughput"]["batch_128"]["images"] == 128
    compiled = sections["throughput"]["compile"]
    assert compiled["model"]["img_s"] > 0 and "vs_eager" in compiled["model"]
    assert "CUDA only" in compiled["cudagraphs"]["skipped"]
    # 1, 2, 4 and 8 processes share a GPU; a CPU packs no more of them than it has cores.
    assert set(sections["packing"]) >= {str(n) for n in (1, 2, 4, 8) if n <= os.cpu_count()}


def test_full_sizes_fit_the_bundled_slice():
    size = gpu_sections_sizes(quick=False, train_images=2000)
    assert size["resume_images"] + size["resume_val"] <= 2000
    assert size["packed_images"] <= 1990 and size["synthetic_images"] == 5000
    capped = gpu_sections_sizes(quick=False, train_images=50_000, cap=300)
    assert capped["synthetic_images"] == capped["resume_images"] == 300
    assert capped["short_run"]["train_subset"] == 300


def gpu_sections_sizes(*, quick, train_images, cap=None):
    from benchmarks import gpu_check

    return gpu_check.sizes(quick, torch.device("cpu"), train_images, cap)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead, only not reaped yet
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def started(monkeypatch):
    """The processes run_packed starts."""
    processes = []
    popen = subprocess.Popen

    def recording(*args, **kwargs):
        processes.append(popen(*args, **kwargs))
        return processes[-1]

    monkeypatch.setattr(gpu_sections.subprocess, "Popen", recording)
    return processes


@pytest.mark.slow
def test_a_packed_worker_that_dies_early_stops_its_siblings(tmp_path, started):
    size = {"packed_images": 64, "packed_epochs": 1}
    go, ready = tmp_path / "go", [tmp_path / f"ready-{i}" for i in range(3)]
    deadline = time.time() + 300
    commands = [
        gpu_sections.worker_command(torch.device("cpu"), size, None, r, go, deadline=deadline)
        for r in ready[:2]
    ]
    commands.append([sys.executable, "-c", "import sys; sys.exit(3)"])  # dies before ready
    began = time.time()
    with pytest.raises(RuntimeError, match=r"exited 3 before it was ready.*siblings were stopped"):
        gpu_sections.run_packed(commands, ready, go, deadline)
    assert time.time() - began < 60  # the parent noticed at once, not at the deadline
    assert len(started) == 3 and not any(_alive(p.pid) for p in started)
    assert not go.exists()


@pytest.mark.slow
def test_a_packed_worker_left_without_a_go_stops_at_its_deadline(tmp_path):
    # The parent gone or stuck: the worker itself gives up at the deadline.
    size = {"packed_images": 64, "packed_epochs": 1}
    ready = tmp_path / "ready-0"
    command = gpu_sections.worker_command(
        torch.device("cpu"), size, None, ready, tmp_path / "go", deadline=time.time() + 20
    )
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert ready.exists() and done.returncode != 0
    assert "no go before the deadline" in done.stderr


@pytest.mark.slow
def test_packed_workers_past_the_deadline_are_stopped(tmp_path, started):
    size = {"packed_images": 64, "packed_epochs": 1}
    go, ready = tmp_path / "go", [tmp_path / "ready-0", tmp_path / "never"]
    deadline = time.time() + 300
    commands = [
        gpu_sections.worker_command(
            torch.device("cpu"), size, None, ready[0], go, deadline=deadline
        ),
        [sys.executable, "-c", "import time; time.sleep(600)"],  # never ready
    ]
    with pytest.raises(TimeoutError, match="not all ready before the deadline"):
        gpu_sections.run_packed(commands, ready, go, time.time() + 15)
    assert len(started) == 2 and not any(_alive(p.pid) for p in started)
