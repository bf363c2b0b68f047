#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md, in one run (about 9 minutes on one H100):
#   bash experiments/gpu_bench.sh [OUTDIR]
# 1. one model against 45 (9 Stringer layers x 5 latents), float32 and bfloat16;
# 2. LFADS (5 factor sizes) against its own loop, and with a controller (co_dim 2);
# 3. the linear decoder, 45 models against 5 (throughput as models are added);
# 4. a Stringer-scale sweep (9 layers x 1131 neurons x 3500 bins, latents 10..150, 3 seeds,
#    neuron counts 100,200,400,800: 675 models) on random data for 200 steps, for its
#    step rate, memory and the time of everything after training.
# 5. (PARTS=stringer_lfads) the Stringer-scale sweep for 3000 steps with its baselines, and,
#    once its training is done (the baselines run mostly on the CPU), the LFADS comparison of
#    `experiments.validate --lfads_trials` trained for LFADS_STEPS steps beside it.
# 6. (PARTS=phases) time to an answer: `experiments.bench --phases=stringer` (9 Stringer-shaped
#    layers, neuron counts 100,200,400,800: 675 models, PCA, FA and the LDS), each phase's wall
#    time, training capped at PHASE_STEPS (default 3000), and the most GPU memory it used
#    (issue 37 asks <= 40 GB). One lent 15-minute session: PARTS=phases first, then
#    PARTS=bench (the lfads/lfads_co rows give the controller's cost).
# Each part has its own time limit, so a slow part cannot take the others with it.
# PARTS (default "bench stringer") names the parts to run.
set -u
PARTS=${PARTS:-bench stringer}
want() { [[ " $PARTS " == *" $1 "* ]]; }
OUT=${1:-runs/gpu_bench}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
B="$PY -m experiments.bench --notorch --json --steps=20 ${BENCH_EXTRA:-}"
part() {  # part NAME SECONDS COMMAND...: run, keep the log, say how long it took
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "=== $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $(( $(date +%s) - t0 )) s"
  grep -E '^\{|sweep step:|compiled|^sweep |steps/s|trained|peak device' "$OUT/$name.log" | cut -c1-1500
}
nvidia-smi -L 2>/dev/null
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"

if want bench; then
part one_f32 60 $B --latents=10 --noloop
part m45_f32 150 $B --layers=9
part one_bf16 60 $B --latents=10 --noloop --dtype=bfloat16
part m45_bf16 60 $B --layers=9 --noloop --dtype=bfloat16
fi

stringer_data() {
$PY -c "
import numpy as np
r = np.random.default_rng(0)
z = r.standard_normal((9, 3500, 40)).astype('f4')
w = r.standard_normal((9, 40, 1131)).astype('f4') / 6
np.save('/tmp/stringer_shape.npy', np.einsum('ltk,lkn->ltn', z, w) + r.standard_normal((9, 3500, 1131), dtype='f4'))"
}
# The Stringer-scale sweep's flags (steps and log interval added by each part).
STRINGER_SWEEP=(-m experiments.sweep --dataset=array --data_path=/tmp/stringer_shape.npy
  --neurons_per_layer=${STRINGER_NEURONS:-1131} --latents=10,25,50,75,150 --seeds=3
  --neuron_counts=${STRINGER_COUNTS:-100,200,400,800} --checkpoint_every=0
  --baselines=pca,fa,lds --workdir=/tmp/stringer_scale)
# No preallocation, so that nvidia-smi's memory.used follows what the sweep holds.
poll_memory() {  # "unix-time MiB" every 2 s into $OUT/stringer_memory_mib.txt; sets POLL
  (while sleep 2; do echo "$(date +%s) $(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits)"; done) \
    > "$OUT/stringer_memory_mib.txt" 2>/dev/null &
  POLL=$!
}
if want stringer; then
stringer_data
poll_memory
XLA_PYTHON_CLIENT_PREALLOCATE=false part stringer_scale ${STRINGER_LIMIT:-240} $PY "${STRINGER_SWEEP[@]}" \
  --steps=${STRINGER_STEPS:-200} --log_every=100
kill $POLL
echo "max GPU memory used: $(awk '{print $2}' "$OUT/stringer_memory_mib.txt" | sort -n | tail -1) MiB"
$PY -c "
import json; r = json.load(open('/tmp/stringer_scale/results.json'))
print('models', len(r['models']), 'seconds', r['seconds'], 'compile_seconds', r['compile_seconds'],
      'complete', r['complete'])" 2>&1 | cut -c1-800
ls -l --time-style=+%T /tmp/stringer_scale 2>/dev/null
fi

if want stringer_lfads; then
stringer_data
poll_memory
export XLA_PYTHON_CLIENT_PREALLOCATE=false
T0=$(date +%s)
timeout ${STRINGER_LIMIT:-480} $PY "${STRINGER_SWEEP[@]}" --steps=3000 --log_every=500 \
  > "$OUT/stringer_full.log" 2>&1 &
SW=$!
until grep -q '^baselines:' "$OUT/stringer_full.log" || ! kill -0 $SW 2>/dev/null; do sleep 2; done
LS=$(date +%s)
echo "stringer training done after $(( LS - T0 )) s; LFADS starts"
timeout ${LFADS_LIMIT:-300} $PY -m experiments.validate --lfads_trials --steps=${LFADS_STEPS:-20000} \
  > "$OUT/lfads_long.log" 2>&1 &
LF=$!
wait $SW; echo "stringer exit $? after $(( $(date +%s) - T0 )) s"
wait $LF; echo "lfads exit $? after $(( $(date +%s) - T0 )) s"
kill $POLL
grep -vE '^\s*$' "$OUT/stringer_full.log" | grep -vE '^  /tmp' | tail -40 | cut -c1-300
tail -25 "$OUT/lfads_long.log" | cut -c1-400
echo "max GPU memory (MiB) before LFADS started: $(awk -v ls=$LS '$1 < ls {print $2}' "$OUT/stringer_memory_mib.txt" | sort -n | tail -1)"
fi

if want phases; then
poll_memory
XLA_PYTHON_CLIENT_PREALLOCATE=false part phases ${PHASES_LIMIT:-540} $PY -m experiments.bench \
  --phases=stringer --phase_steps=${PHASE_STEPS:-3000} --json
kill $POLL
grep -E '^\||^shape' "$OUT/phases.log"
echo "max GPU memory used (baselines included): $(awk '{print $2}' "$OUT/stringer_memory_mib.txt" | sort -n | tail -1) MiB"
fi

if want bench; then
part lfads 120 $B --model=lfads
part lfads_co 120 $B --model=lfads --co_dim=2 --noloop
part linear45 60 $B --layers=9 --decoder=linear --noloop
part linear5 60 $B --layers=1 --decoder=linear --noloop
fi
