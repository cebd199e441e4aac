#!/usr/bin/env bash
# GPU extraction check: patches/s per GPU, GPU utilisation over the run, and the reader-only supply rate.
#
# Usage: bash benchmarks/gpu_check.sh [WORKDIR]      (default: a fresh folder under $TMPDIR)
#   env: GHANET (command, default "python -m ghanet_pipeline"), PY (python, default python3),
#        SLIDES (number of slides, default 24), SIDE (slide side in px, default 16384),
#        BATCHES ("256 512"), BUDGET_S (whole-script limit in seconds, default 480),
#        RESULTS (folder for the record, default benchmarks/results)
#
# On a machine with NVIDIA GPUs: writes SLIDES synthetic 20x Aperio-like slides (~1,400 patches each;
# a few distinct files, the rest copies), segments them, measures the tile supply alone (reader
# processes = cores - 1, no model), then runs `extract-features --device cuda --precision bf16` with
# each batch size in BATCHES and `--devices` over all GPUs, sampling nvidia-smi every 0.5 s. Writes one
# record (bench `gpu_check`, tables `main` per batch size and `reader`) to benchmarks/results/ (or
# RESULTS=DIR) with `python -m benchmarks.harness record`, and prints its tables. Finishes within
# BUDGET_S (steps are cut short with `timeout`; a cut step is reported and left out of the record).
# On a machine without a usable NVIDIA GPU it prints "no GPU: <reason>", writes nothing and exits 0.
set -u
PY=${PY:-python3}
GHANET=${GHANET:-"$PY -m ghanet_pipeline"}
SLIDES=${SLIDES:-24}
SIDE=${SIDE:-16384}
BATCHES=${BATCHES:-"256 512"}
BUDGET_S=${BUDGET_S:-480}
START=$(date +%s)
left() { echo $(( BUDGET_S - ($(date +%s) - START) )); }

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "no GPU: nvidia-smi not found (this check needs an NVIDIA GPU and driver)"; exit 0
fi
if ! NGPU=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l) || [ "$NGPU" -lt 1 ]; then
  echo "no GPU: nvidia-smi lists no GPU"; exit 0
fi
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "no GPU: torch cannot use CUDA here ($($PY -c 'import torch; print(torch.__version__, torch.version.cuda)' 2>&1 | tail -1))"
  exit 0
fi
set -e
case $0 in */*) ROOT=$(cd "${0%/*}/.." && pwd) ;; *) ROOT=$(cd .. && pwd) ;; esac
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD0=""; [ -r /proc/loadavg ] && { read -r L1 L5 L15 _ < /proc/loadavg; LOAD0="$L1 $L5 $L15"; }
WORK=${1:-$(mktemp -d "${TMPDIR:-/tmp}/ghanet-gpu-check.XXXXXX")}
mkdir -p "$WORK/slides"
WORK=$(cd "$WORK" && pwd)
if [ -n "${RESULTS:-}" ]; then mkdir -p "$RESULTS"; RESULTS=$(cd "$RESULTS" && pwd); fi
rm -f "$WORK/rows.jsonl"   # rows of this run only
CORES=$($PY -c "import os; print(len(os.sched_getaffinity(0)))")
WORKERS=$(( CORES / NGPU - 1 )); [ "$WORKERS" -lt 1 ] && WORKERS=1
DEVICES=$($PY -c "print(','.join(f'cuda:{i}' for i in range($NGPU)))")
echo "GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs); cores $CORES; reader workers per GPU $WORKERS; work dir $WORK"

# 1. slides: a few distinct files written in parallel, the rest copies (JPEG decoding cost is the same)
DISTINCT=$(( SLIDES < 4 ? SLIDES : 4 ))
$PY - "$WORK/slides" "$SLIDES" "$DISTINCT" "$SIDE" <<'PYEOF'
import shutil, sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from ghanet_pipeline.wsi.synthetic import write_synthetic_slide
d, n, k, side = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def make(i):
    p = d / f"gpu_{i:03d}.svs"
    if not p.exists():
        write_synthetic_slide(p, side, side, mpp=0.5, phenotype=0.3, seed=100 + i)
    return p
with ProcessPoolExecutor(k) as ex:
    srcs = list(ex.map(make, range(k)))
for i in range(k, n):
    p = d / f"gpu_{i:03d}.svs"
    if not p.exists():
        shutil.copy(srcs[i % k], p)
PYEOF
echo "slides written ($(left) s left)"
timeout "$(left)" $GHANET segment "$WORK/slides" --out "$WORK/out" --no-progress >/dev/null
echo "segmented ($(left) s left)"

# 2. reader-only supply rate: all slides' patches through the DataLoader the extractor uses, no model
timeout "$(( $(left) / 4 ))" $PY - "$WORK" "$WORKERS" <<'PYEOF' || echo "reader-only: cut short by the time budget"
import json, sys, time
from pathlib import Path
from torch.utils.data import DataLoader
from ghanet_pipeline.features.loader import PatchBatches, reader_context, worker_init
from ghanet_pipeline.wsi.segment import load_coords, segment_paths
from ghanet_pipeline.wsi.slide import Slide
work, workers = Path(sys.argv[1]), int(sys.argv[2])
slides = sorted((work / "slides").glob("*.svs"))[:6]
n, t0 = 0, time.perf_counter()
for p in slides:
    sid = p.name.split(".")[0]
    coords, attrs = load_coords(segment_paths(work / "out", sid)["coords"])
    with Slide(p) as s:
        plan = s.plan(attrs["target_mpp"], attrs["patch_size"])
    data = PatchBatches(p, sid, None, plan, coords, 256, 256)
    for _, b in DataLoader(data, batch_size=None, num_workers=workers, worker_init_fn=worker_init,
                           multiprocessing_context=reader_context(), prefetch_factor=4):
        n += len(b)
secs = time.perf_counter() - t0
print(f"reader-only supply: {n} patches in {secs:.1f} s = {n / secs:.0f} patches/s with {workers} reader processes "
      f"({n / secs / workers:.0f} per reader)")
with open(work / "rows.jsonl", "a") as fh:
    fh.write(json.dumps({"table": "reader", "reader_processes": workers, "slides": len(slides), "patches": n,
                         "seconds": secs, "patches_per_s": n / secs, "per_reader": n / secs / workers}) + "\n")
PYEOF

# 3. extraction on all GPUs, bf16, per batch size, with nvidia-smi sampling
for B in $BATCHES; do
  T=$(left); [ "$T" -lt 30 ] && { echo "batch $B: skipped, time budget spent"; continue; }
  nvidia-smi --query-gpu=index,utilization.gpu --format=csv,noheader,nounits -lms 500 > "$WORK/util_$B.csv" &
  SMI=$!
  S0=$(date +%s.%N)
  CUT=0
  timeout "$(( T - 15 ))" $GHANET extract-features "$WORK/slides" --out "$WORK/out_b$B" --weights random --overwrite \
    --no-progress --precision bf16 --batch-size "$B" --num-workers "$WORKERS" --devices "$DEVICES" \
    > "$WORK/extract_$B.log" 2>&1 || { CUT=1; echo "batch $B: extract-features stopped early (time budget or error, see $WORK/extract_$B.log)"; }
  S1=$(date +%s.%N)
  kill "$SMI" 2>/dev/null || true; wait "$SMI" 2>/dev/null || true
  cp -r "$WORK/out/segment" "$WORK/out_b$B/" 2>/dev/null || true
  $PY - "$WORK" "$B" "$S0" "$S1" "$NGPU" "$CUT" <<'PYEOF'
import json, sys
from pathlib import Path
import h5py
work, b, s0, s1, ngpu = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
cut = sys.argv[6] == "1"
n = 0
for bag in (work / f"out_b{b}" / "features").glob("*/*.h5"):
    with h5py.File(bag) as f:
        if f.attrs.get("complete"):
            n += len(f["features"])
secs = s1 - s0
util = {}
for line in (work / f"util_{b}.csv").read_text().splitlines():
    try:
        i, u = (int(v) for v in line.split(","))
    except ValueError:
        continue
    util.setdefault(i, []).append(u)
mean = {i: sum(v) / len(v) for i, v in util.items() if v}
print(f"batch {b}: {n} patches in {secs:.1f} s (whole command, incl. start-up) = {n / secs:.0f} patches/s, "
      f"{n / secs / ngpu:.0f} per GPU; GPU utilisation mean " + ", ".join(f"gpu{i} {m:.0f}%" for i, m in sorted(mean.items())))
if not cut and n:
    with open(work / "rows.jsonl", "a") as fh:
        fh.write(json.dumps({"batch": int(b), "patches": n, "seconds": secs, "patches_per_s": n / secs,
                             "per_gpu": n / secs / ngpu, "gpu_util": sum(mean.values()) / max(1, len(mean)),
                             "gpu_util_each": ", ".join(f"gpu{i} {m:.0f}%" for i, m in sorted(mean.items()))}) + "\n")
PYEOF
done
echo "done in $(( $(date +%s) - START )) s; logs in $WORK"

# 4. one record of the complete steps, like every benchmark (benchmarks/results/gpu_check-<time>.json)
if [ -s "$WORK/rows.jsonl" ]; then
  (cd "$ROOT" && $PY -m benchmarks.harness record gpu_check "$WORK/rows.jsonl" --started "$STARTED" \
    --load-before "$LOAD0" ${RESULTS:+--results "$RESULTS"} \
    --title "GPU extraction: whole extract-features commands over $SLIDES synthetic 20x slides of $SIDE px, bf16, all GPUs" \
    --param "slides=$SLIDES" --param "side=$SIDE" --param "batches=$BATCHES" --param "gpus=$NGPU" \
    --param "reader_workers=$WORKERS" \
    --unit batch= --unit patches= --unit seconds=s --unit patches_per_s=patches/s --unit per_gpu=patches/s \
    --unit gpu_util=% --unit reader_processes= --unit slides= --unit per_reader=patches/s \
    --label "per_gpu=per GPU (patches/s)" --label "gpu_util=mean GPU utilisation (%)" \
    --label "gpu_util_each=per GPU" --label "per_reader=per reader process (patches/s)" \
    --note "whole commands incl. start-up; $WORKERS reader processes per GPU; utilisation sampled every 0.5 s" \
    -- env "SLIDES=$SLIDES" "SIDE=$SIDE" "BATCHES=$BATCHES" bash benchmarks/gpu_check.sh) \
    || echo "could not write the record (see above)"
fi
