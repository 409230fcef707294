#!/usr/bin/env bash
# Builds gpu_upload/ (git-ignored): the parts benchmarks/gpu_run.sh needs on a GPU machine that
# has no package registry, and checks that each upload, with the checkout, fits a 64 MiB limit
# per upload (see docs/gpu.md).
#
#   bash benchmarks/make_gpu_upload.sh [MIRROR_DIR]   build (default ../shared/data/cifar10)
#   bash benchmarks/make_gpu_upload.sh --sizes        only measure what is there
#
# Layout: gpu_upload/offline_bundle.py (the unpacker: ../shared does not travel),
# gpu_upload/wheels/part-01 + SHA256SUMS (benchmarks/gpu_wheels.txt for CPython 3.12),
# gpu_upload/data/part-01..04 + SHA256SUMS (the mirror, 40 MiB parts: 44 would leave under
# 1 MiB of room beside a 19.3 MiB checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
TOOL=../shared/tools/offline_bundle.py
PY=${PYTHON:-.venv/bin/python}
if [[ ${1:-} != --sizes ]]; then
  mirror=${1:-../shared/data/cifar10}
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  # shellcheck disable=SC2046  # one requirement per word
  "$PY" "$TOOL" wheels "$scratch/wheels" $(grep -v '^#' benchmarks/gpu_wheels.txt)
  "$PY" "$TOOL" pack gpu_upload/wheels "$scratch/wheels" --part-mib 56
  "$PY" "$TOOL" pack gpu_upload/data "$mirror" --part-mib 40
  cp "$TOOL" gpu_upload/offline_bundle.py
fi
# Each device call carries the checkout (tracked and untracked-not-ignored files) plus the
# paths it names; the first names the unpacker, the wheels and the data's sums.
"$PY" - <<'PY'
import subprocess
from pathlib import Path

MIB = 2**20
files = subprocess.run(
    ["git", "ls-files", "-z", "-co", "--exclude-standard"], capture_output=True, check=True
).stdout.split(b"\0")
checkout = sum(Path(f.decode()).stat().st_size for f in files if f and Path(f.decode()).is_file())
up = Path("gpu_upload")
calls = [[up / "offline_bundle.py", up / "wheels", up / "data" / "SHA256SUMS"]]
calls += [[part] for part in sorted((up / "data").glob("part-*"))]
print(f"checkout: {checkout / MIB:.1f} MiB ({checkout} bytes)")
worst = 0.0
for number, paths in enumerate(calls, start=1):
    size = sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")))
    total = (size + checkout) / MIB
    worst = max(worst, total)
    names = ", ".join(str(p) for p in paths)
    print(f"call {number}: {size / MIB:5.1f} MiB carried + checkout = {total:5.1f} MiB  [{names}]")
print(f"largest call {worst:.1f} MiB of 64: {'fits' if worst <= 64 else 'TOO LARGE'}")
raise SystemExit(0 if worst <= 64 else 1)
PY
