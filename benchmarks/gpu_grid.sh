#!/usr/bin/env bash
# Train, evaluate and record the image grid of chapters 05 and 06 on one GPU, JOBS runs at a time,
# and time it. Runs without Dask or the project's .venv (a GPU machine's own python3 with torch,
# numpy, pandas, scikit-learn, tqdm will do): python -m mimlib.sweep --commands lists one
# `python -m mimlib.image_study` line per run not yet recorded (longest first), xargs runs them.
#
#   OUT=/tmp/out bash benchmarks/gpu_grid.sh                      # both studies, seeds 0-2, book preset
#   OUT=/tmp/out STUDIES=images SEEDS=0 DATASETS=mnist bash benchmarks/gpu_grid.sh
#   OUT=/tmp/out DEVICE=cpu PRESET=smoke JOBS=2 bash benchmarks/gpu_grid.sh   # the plumbing, on a CPU
#   # one study, its own grid and further overrides (chapter 07's open A-MIM question: a long warm-up)
#   OUT=/tmp/out STUDIES=pixelhvae GRID="dataset=[mnist] objective=[amim] seed=[0,1]" \
#       SET="warmup_epochs=40 max_epochs=80" bash benchmarks/gpu_grid.sh
#
# Every finished run leaves its record (mimlib.records: config, history, results row, figure arrays;
# no weights) under $RECORDS; every PACK_EVERY seconds, and at the end, the records are packed into
# $OUT/records.tgz (replaced atomically), so a command stopped at its time limit still returns every
# run that finished. Unpack into the repository with
#   tar xzf records.tgz -C book/results/records
# and re-execute the chapters from the records. Runs are checkpointed every epoch under $RUNS:
# re-running this script on the same machine resumes them. A line per run goes to $OUT/grid.log.
set -euo pipefail
OUT=${OUT:?set OUT to the folder that receives records.tgz and grid.log}
PY=${PY:-python3}
PRESET=${PRESET:-book}
SEEDS=${SEEDS:-0,1,2}
DATASETS=${DATASETS:-mnist,fashion-mnist}
STUDIES=${STUDIES:-images pixelhvae}
DEVICE=${DEVICE:-cuda}
JOBS=${JOBS:-8}
RUNS=${RUNS:-/tmp/mimlib-runs}
RECORDS=${RECORDS:-/tmp/mimlib-records}
PACK_EVERY=${PACK_EVERY:-30}
GRID=${GRID:-}        # replaces the study's grid below (with one study only)
SET=${SET:-}          # further NAME=VALUE overrides of the preset, space-separated
export MIMLIB_DATA=${MIMLIB_DATA:-$PWD/shared/data} MIMLIB_PROGRESS=0 PYTHONUNBUFFERED=1 MIMLIB_PYTHON=$PY
mkdir -p "$OUT" "$RUNS" "$RECORDS"
log="$OUT/grid.log"

pack() {
    tar czf "$OUT/.records.tgz" -C "$RECORDS" . && mv -f "$OUT/.records.tgz" "$OUT/records.tgz"
}

{
    date -u +"start %Y-%m-%dT%H:%M:%SZ"
    $PY -c "import torch; from mimlib import precision; print('torch', torch.__version__); \
print(precision.describe('$DEVICE'))"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    if [ -n "$GRID" ]; then echo "preset $PRESET, study $STUDIES, grid $GRID, device $DEVICE, $JOBS at a time"
    else echo "preset $PRESET, seeds $SEEDS, datasets $DATASETS, studies $STUDIES, device $DEVICE, $JOBS at a time"; fi
    [ -z "$SET" ] || echo "overrides of the preset: $SET"
} | tee "$log"

if [ -n "$GRID" ] && [ "$(wc -w <<< "$STUDIES")" -ne 1 ]; then
    echo "GRID replaces one study's grid: set STUDIES to one study (images or pixelhvae)" >&2; exit 2
fi
cmds="$OUT/commands.txt"
: > "$cmds"
for study in $STUDIES; do
    case $study in
        images) grid="dataset=[$DATASETS] prior=[vampprior,standard] objective=[mim,vae] seed=[$SEEDS]" ;;
        pixelhvae) grid="dataset=[$DATASETS] objective=[vae,amim] seed=[$SEEDS]" ;;
        *) echo "unknown study $study (images, pixelhvae)" >&2; exit 2 ;;
    esac
    grid=${GRID:-$grid}
    # shellcheck disable=SC2086  # SET is a list of words
    $PY -m mimlib.sweep --study "$study" --preset "$PRESET" --grid "$grid" --set "device=$DEVICE" $SET \
        --runs-dir "$RUNS" --records-dir "$RECORDS" --commands >> "$cmds"
done
echo "$(wc -l < "$cmds") runs to train" | tee -a "$log"

( while sleep "$PACK_EVERY"; do pack; done ) &
packer=$!
trap 'kill $packer 2>/dev/null || true; pack' EXIT

t0=$(date +%s)
# one line per run: its exit status and wall time; its own output in $RUNS/logs (not sent back)
mkdir -p "$RUNS/logs"
xargs -d '\n' -P "$JOBS" -I{} bash -c '
    s=$(date +%s); n=$(printf "%s" "$1" | md5sum | cut -c1-8)
    if eval "$1" > "$2/logs/$n.log" 2>&1; then r=ok; else r="FAILED ($2/logs/$n.log)"; fi
    echo "$(( $(date +%s) - s )) s  $r  $(head -c 300 "$2/logs/$n.log" | head -1 | cut -d: -f1)"
' _ {} "$RUNS" < "$cmds" | tee -a "$log"
echo "grid done in $(( $(date +%s) - t0 )) s wall" | tee -a "$log"
