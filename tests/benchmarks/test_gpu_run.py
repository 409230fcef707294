"""benchmarks/gpu_run.sh, rehearsed without a GPU: its staging of the uploaded parts."""

import os
import shutil
import subprocess
import sys

import pytest

from ..support import REPO

BUNDLE_TOOL = REPO.parent / "shared" / "tools" / "offline_bundle.py"


@pytest.mark.skipif(not BUNDLE_TOOL.is_file(), reason="no ../shared/tools/offline_bundle.py")
def test_gpu_run_stage_checks_the_parts_that_arrived(tmp_path):
    # Parts made the way make_gpu_upload.sh makes them, from small stand-ins.
    upload = tmp_path / "upload"
    for name in ("wheels", "data"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "payload.bin").write_bytes(os.urandom(2_500_000))  # 3 parts of 1 MiB
        command = [sys.executable, BUNDLE_TOOL, "pack", upload / name, tmp_path / name]
        subprocess.run([*command, "--part-mib", "1"], check=True, capture_output=True)
    shutil.copy(BUNDLE_TOOL, upload / "offline_bundle.py")

    def stage():
        env = {**os.environ, "OUT": str(tmp_path / "out"), "GPU_UPLOAD": str(upload)}
        return subprocess.run(
            ["bash", REPO / "benchmarks" / "gpu_run.sh", "--stage"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    done = stage()
    assert done.returncode == 0 and "every part is here" in done.stderr, done.stderr
    last = sorted((upload / "data").glob("part-*"))[-1]
    last.unlink()
    done = stage()
    assert done.returncode == 0 and f"missing {last.name}" in done.stderr, done.stderr
    last.write_bytes(b"not the part")
    done = stage()
    assert done.returncode == 1 and f"{last.name}: bad checksum" in done.stderr, done.stderr
