import json
import os
import subprocess
import sys

import pytest

from .helpers import REPO


@pytest.mark.slow
def test_gpu_check_quick_cpu_mode_writes_its_report(tmp_path):
    # A `ray` package that fails to import stands for a machine without Ray: that section must
    # be skipped with a note while every other section runs.
    fake = tmp_path / "fake" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no Ray on this machine')\n")
    out = tmp_path / "out"
    path = os.pathsep.join([str(tmp_path / "fake"), str(REPO)])
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out", out],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert (out / "gpu_check.md").read_text().startswith("# cifartune GPU check (cpu)")
    assert report["device"] == "cpu" and report["quick"] is True
    assert report["versions"]["torch"] and report["versions"]["python"]
    sections = report["sections"]
    assert set(sections) == {"throughput", "precision", "resume", "packing", "ray"}
    for batch in ("batch_128", "batch_8"):
        row = sections["throughput"][batch]
        assert row["engine_img_s"] > 0 and row["reference_img_s"] > 0
        assert row["ratio"] == pytest.approx(row["engine_img_s"] / row["reference_img_s"], 0.01)
    for precision in ("fp32", "bf16"):
        assert 0 <= sections["precision"][precision]["val_top1"] <= 100
    assert abs(sections["precision"]["val_top1_diff"]) < 10
    assert sections["resume"]["exact"] is True
    assert {"1", "2"} <= set(sections["packing"])
    assert all(sections["packing"][n]["aggregate_img_s"] > 0 for n in ("1", "2"))
    assert "no Ray on this machine" in sections["ray"]["skipped"]
