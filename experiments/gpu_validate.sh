#!/usr/bin/env bash
# The validation table of docs/validation.md on one GPU, every family at once (run by hand):
#   bash experiments/gpu_validate.sh [OUTDIR]
# Each `experiments.validate` run is its own process sharing the GPU (no preallocation); PCA and
# FA run on the CPU cores beside them. Matmuls at float32 precision (JAX_DEFAULT_MATMUL_PRECISION
# =highest), as on a CPU, not the GPU's default TF32. RUNS (default: all below; empty: none)
# names the runs. LFADS_SEEDS="5 6" adds `--lfads_trials --data_seed=N` runs (lfads_trials_seedN),
# and LFADS_CO0_SEEDS the same with `--co_dim=0` (no controller; lfads_trials_co0_seedN).
# The draws_* runs validate over fresh draws; each appends finished draws to its rows file, so a
# run the LIMIT cut short resumes where it stopped (`--only_rows` prints the table of a file).
set -u
OUT=${1:-runs/gpu_validate}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
LIMIT=${LIMIT:-420}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest
declare -A ARGS=(
  [synthetic_linear]="--families=synthetic --decoders=linear"
  [synthetic_mlp]="--families=synthetic --decoders=mlp"
  [nonlinear_linear]="--families=nonlinear --decoders=linear"
  [nonlinear_mlp]="--families=nonlinear --decoders=mlp"
  [nonlinear_mlp_1200]="--families=nonlinear --decoders=mlp --steps=1200"
  [lorenz]="--families=lorenz,independent"
  [lorenz_whitened]="--families=lorenz_whitened"
  [lfads_trials]="--lfads_trials"
  [draws_manifolds]="--draws=5 --families=ring,torus,sequence,calcium,independent --rows=$OUT/draws_manifolds.jsonl"
  [draws_linear]="--draws=5 --families=linear_gaussian,lorenz,lorenz_whitened --rows=$OUT/draws_linear.jsonl"
  [draws_curved]="--draws=5 --families=synthetic,nonlinear --rows=$OUT/draws_curved.jsonl"
)
RUNS=${RUNS-${!ARGS[@]}}
add() { ARGS[$1]=$2; RUNS+=" $1"; }  # add NAME "VALIDATE ARGS"
for n in ${LFADS_SEEDS:-}; do add lfads_trials_seed$n "--lfads_trials --data_seed=$n"; done
for n in ${LFADS_CO0_SEEDS:-}; do
  add lfads_trials_co0_seed$n "--lfads_trials --co_dim=0 --data_seed=$n"
done
nvidia-smi -L 2>/dev/null
$PY -c "import jax; print('jax', jax.__version__, jax.devices())"
T0=$(date +%s)
for r in $RUNS; do
  timeout "$LIMIT" $PY -m experiments.validate ${ARGS[$r]} > "$OUT/$r.log" 2>&1 &
done
wait
echo "all done after $(( $(date +%s) - T0 )) s"
for r in $RUNS; do echo "=== $r"; grep -E '^\||min\.$|Error|error' "$OUT/$r.log" | tail -30; done
