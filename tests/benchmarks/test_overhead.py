"""The overhead benchmark on the smallest study it can measure: both runs complete and each has
its numbers (a process of its own: the benchmark times the study callback by patching it, and
starts Ray in its own process)."""

import json
import subprocess
import sys

from ..support import REPO


def test_the_overhead_benchmark_measures_cifartune_against_plain_ray_tune(tmp_path):
    args = ["--sizes", "2", "--s3-sizes", "--slots", "1", "--out", str(tmp_path)]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.overhead", *args],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads((tmp_path / "overhead.json").read_text())
    assert [r["kind"] for r in rows] == ["cifartune", "ray-tune"]
    cifartune = rows[0]
    assert cifartune["events"] > 0 and cifartune["driver_s_per_event"] > 0
    assert all(r["wall_s"] > 0 and r["trials_per_min"] > 0 for r in rows)
