#!/usr/bin/env bash
# The first run on the lent GPU machine, in one command (docs/gpu.md):
#
#   OUT=/some/dir bash benchmarks/gpu_run.sh [--stage] [--dry] [--budget SECONDS]
#
# The machine has Python 3.12 with torch, torchvision, pandas, pyarrow, pyyaml, seaborn,
# filelock and pytest, but no pydantic, Ray or Optuna and no package registry: those come as
# wheels, and CIFAR-10 as a mirror, in the upload parts under gpu_upload/ (made by
# shared/tools/offline_bundle.py, whose copy travels with them). Steps:
#
#   1. check the parts' SHA256SUMS, unpack them (once), install the wheels into $SITE;
#   2. python -m benchmarks.gpu_check on the full mirror (about 3 minutes, capped at $CHECK_S);
#   3. the studies, in order, while the budget lasts: seed_ablation at 1 seed, then
#      seed_lr_batch at 1 seed, then optuna_asha with 16 samples. A study the budget cuts
#      short is stopped by SIGTERM (it ends "interrupted", resumable): running this script
#      again continues it (cifartune resume) instead of starting over;
#   4. a report of what ran, and everything packed under $OUT (at most 8 files, none over
#      16 MiB: checkpoints and Ray's own state stay behind).
#
# --stage: only step 1's check, for the parts that have arrived so far (run after each
#          upload: it lists what is still missing); nothing is unpacked or run.
# --dry:   rehearsal size, on the CPU: tiny subsets and epochs, gpu_check small; every step
#          still runs, on the same parts.
# --budget: seconds this run may take in all (default 540: a device command may run 600).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
UPLOAD=${GPU_UPLOAD:-$REPO/gpu_upload}
WORK=${GPU_RUN_WORK:-/tmp/gpu_run}
SITE=${GPU_RUN_SITE:-$WORK/site}
PY=${PYTHON:-python3}
: "${OUT:?set OUT to the folder whose files come back}"
budget=540 stage=0 dry=0
while (($#)); do
  case $1 in
    --stage) stage=1 ;;
    --dry) dry=1 ;;
    --budget) budget=$2; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT" "$WORK/logs"
started=$SECONDS
log() { echo "[gpu_run +$((SECONDS - started))s] $*" | tee -a "$OUT/gpu_run.log" >&2; }
left() { echo $((budget - (SECONDS - started))); }

# --- 1. the upload parts ----------------------------------------------------------------------
check_parts() {  # $1: a part folder; prints what is missing, fails on a bad checksum
  local dir=$1 missing=()
  [[ -f $dir/SHA256SUMS ]] || { log "$dir: no SHA256SUMS yet"; return 1; }
  while read -r sum name; do
    if [[ ! -f $dir/$name ]]; then missing+=("$name"); continue; fi
    echo "$sum  $dir/$name" | sha256sum --check --quiet - || { log "$dir/$name: bad checksum"; exit 1; }
  done < "$dir/SHA256SUMS"
  if ((${#missing[@]})); then log "$dir: missing ${missing[*]}"; return 1; fi
  log "$dir: $(wc -l < "$dir/SHA256SUMS") part(s), checksums match"
}

unpack() {  # $1: part folder, $2: destination; once per machine
  [[ -f $2/.unpacked ]] && return 0
  rm -rf "$2"
  "$PY" "$UPLOAD/offline_bundle.py" unpack "$1" "$2" | tee -a "$OUT/gpu_run.log"
  touch "$2/.unpacked"
}

install_wheels() {  # pip when the machine has it, else the wheels unzipped (what pip does here)
  [[ -f $SITE/.installed ]] && return 0
  local wheels=("$WORK"/wheels/*/*.whl)
  if "$PY" -m pip --version > /dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "${wheels[@]}"
  else
    log "no pip: unzipping ${#wheels[@]} wheels into $SITE"
    "$PY" - "$SITE" "${wheels[@]}" <<'EOF'
import sys, zipfile
from pathlib import Path
site = Path(sys.argv[1])
for wheel in sys.argv[2:]:
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            path = Path(archive.extract(info, site))
            mode = info.external_attr >> 16  # Ray's binaries must stay executable
            if mode and not info.is_dir():
                path.chmod(mode & 0o777)
EOF
  fi
  touch "$SITE/.installed"
}

ok=1
check_parts "$UPLOAD/wheels" || ok=0
check_parts "$UPLOAD/data" || ok=0
if ((stage)); then
  log "stage check done: $( ((ok)) && echo 'every part is here' || echo 'parts missing (above)')"
  exit 0
fi
((ok)) || { log "parts missing: upload them first (docs/gpu.md)"; exit 1; }
unpack "$UPLOAD/wheels" "$WORK/wheels"
unpack "$UPLOAD/data" "$WORK/data"
install_wheels
export PYTHONPATH=$SITE:$REPO
export CIFARTUNE_DATA=$WORK/data/cifar10
"$PY" -c "import cifartune, optuna, pydantic, ray, torch; print('ray', ray.__version__, \
'optuna', optuna.__version__, 'pydantic', pydantic.__version__, 'torch', torch.__version__, \
'cuda', torch.cuda.is_available())" 2>&1 | tee -a "$OUT/gpu_run.log"
{
  nvidia-smi 2> /dev/null || echo "no nvidia-smi"
  "$PY" -m pip list 2> /dev/null || true
} > "$OUT/environment.txt"

# --- 2. gpu_check -------------------------------------------------------------------------------
if ((dry)); then
  check_args=(--device cpu --images 300 --no-ray) CHECK_S=${CHECK_S:-600}
  # Ray's fail-fast check refuses GPU shares on a CPU; tiny data and epochs (ASHA's first
  # rung must fit in them).
  sizes=(--set resources.gpus=0 --set resources.cpus=1 --set base.epochs=2
    --set base.data.train_subset=200 --set base.data.val_size=200)
  asha=(--set scheduler.grace_period=1)
else
  check_args=(--no-ray) CHECK_S=${CHECK_S:-240}  # the studies below are the Ray check
  sizes=() asha=()
fi
# Its report is rewritten after each section: with the last one ("ray") in it, it is done.
if ! grep -qs '"ray"' "$WORK/gpu_check/gpu_check.json"; then
  log "gpu_check (at most ${CHECK_S}s)"
  timeout -k 20 "$CHECK_S" "$PY" -m benchmarks.gpu_check --data-dir "$CIFARTUNE_DATA" \
    --out "$WORK/gpu_check" "${check_args[@]}" > "$WORK/logs/gpu_check.log" 2>&1 \
    || log "gpu_check exited $? (its sections so far are in gpu_check.json)"
fi
cp "$WORK"/gpu_check/gpu_check.{json,md} "$OUT"/ 2> /dev/null || log "gpu_check wrote no report"

# --- 3. the studies -----------------------------------------------------------------------------
RESERVE=${GPU_RUN_RESERVE:-45}  # seconds kept for the report and the packing
studies=(
  "seed_ablation --set repeats=1"
  "seed_lr_batch --set repeats=1"
  "optuna_asha --set search.samples=16 ${asha[*]}"
)
ran=()
for entry in "${studies[@]}"; do
  read -r name overrides <<< "$entry"
  results=$WORK/results/$name
  if grep -qs '"state": "completed"' "$results/study.json"; then ran+=("$results"); continue; fi
  seconds=$(($(left) - RESERVE))
  if ((seconds < 60)); then log "$name: no time left (${seconds}s)"; break; fi
  if [[ -f $results/study.json ]]; then
    command=(resume "$results")  # cut short by an earlier run of this script
  else
    # shellcheck disable=SC2206  # the overrides are words
    command=(run "studies/$name.yaml" --storage "$WORK/results" $overrides "${sizes[@]}")
  fi
  log "$name: cifartune ${command[*]} (at most ${seconds}s)"
  status=0
  timeout -k 30 -s TERM "$seconds" "$PY" -m cifartune "${command[@]}" \
    > "$WORK/logs/$name.log" 2>&1 || status=$?
  log "$name: exit $status ($(tail -n 1 "$WORK/logs/$name.log"))"
  [[ -f $results/study.json ]] && ran+=("$results")
  ((status == 0)) || break  # interrupted by the budget (130/124) or failed: stop here
done

# --- 4. the report and $OUT ---------------------------------------------------------------------
if ((${#ran[@]})); then
  "$PY" -m cifartune report "${ran[@]}" --out "$WORK/report" --title "cifartune on one GPU" \
    > "$WORK/logs/report.log" 2>&1 || log "report failed: $(tail -n 1 "$WORK/logs/report.log")"
  cp "$WORK"/report/{report.html,summary.md} "$OUT"/ 2> /dev/null || true
fi
packed=()
for dir in results report logs gpu_check; do [[ -d $WORK/$dir ]] && packed+=("$dir"); done
tar -czf "$OUT/results.tar.gz" -C "$WORK" --exclude=checkpoints --exclude=ray "${packed[@]}"
log "done in $((SECONDS - started))s; \$OUT holds: $(cd "$OUT" && echo *)"
du -b "$OUT"/* | awk '$1 > 16 * 2^20 {print "over 16 MiB, will not come back:", $2}' >&2
