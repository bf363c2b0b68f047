r"""Validation of the dimension estimate on generator families with known answers (run by hand).

  python -m experiments.validate                      # every family, both decoders, two grids
  python -m experiments.validate --families=lorenz --decoders=linear --seeds=1
  python -m experiments.validate --families=nonlinear --decoders=mlp --population=4  # with PBT

Each family (nmas_jax.data.synthetic.FAMILIES) is swept at full size on two latent
grids with the default settings (`--steps`, `--seeds` may override them), with
the linear and the MLP decoder. Prints a markdown table: family, decoder, grid,
seeds, the step the layer's last model stopped, how many of its models the --steps cap stopped
before they converged (`unconverged`: rerun with a larger --steps where it is high), layer, truth,
what the rule should answer (the smallest swept latent at or above the truth;
2 or 3 on Lorenz with the MLP decoder, whose attractor is about 2.06-dimensional; none for the
linear decoder on the curved families (synthetic, nonlinear),
whose linear dimension exceeds the truth), the choice, its interval, the
knee, one-SE, the detectable latent, PCA's and FA's choices by the same rule,
and, where the generator's noiseless signal is known (Lorenz), the oracle: the
rule on the gain curve of the true signal's best rank-k summary
(`nmas_jax.evaluation.dimension.oracle_gains`); then the runtime. Each printed line also
gives the chosen model's test-block score against PCA's and FA's at the same
size (`test_model`, `test_pca`, `test_fa`; not in the table).
With --write, the table and a stamp of the run (command, date, versions, machine) replace
the table between the markers in docs/validation.md.

  python -m experiments.validate --scaling

instead checks the --neuron_counts axis on two generators: a layer of fixed
dimension (family i with 7 latent signals), whose chosen dimension should
flatten at the smallest swept latent at or above 7 as neurons are added, and a
layer whose shared signal has a power-law spectrum (exponent 1, 100 latent
signals), whose chosen dimension should keep rising. Prints a table of the
chosen latent per count, the slope, whether it saturates, and the LDS, PCA and
FA choices.

  python -m experiments.validate --lfads_trials

instead runs the LFADS benchmark shape (`--dataset=lorenz_trials`: 600 trials of 50 bins, 40
Poisson neurons, true dimension 3, split by trial) through `--model=lfads` and
`--model=autoencoder` on one factor grid (LFADS_SETTINGS: 4000 steps, the learning rate halved
every 2000; LFADS with 2 inferred inputs per bin, LFADS_ONLY), and scores Gaussian-smoothed
spikes (held-in spikes smoothed, a Poisson GLM to the held-out neurons) at the width that is
best on the validation trials. Prints each method's chosen size, held-out bits/spike on the
test trials, and the inferred rates' R2 against the true rates; the true rates' row gives the
ceiling, and as its choice what the rule answers on them (`dimension.oracle_gains`).
"""

from __future__ import annotations

import os
import re
import sys
import time

from absl import app, flags

from experiments import calibration
from nmas_jax.data import lorenz
from nmas_jax.evaluation import metrics
from nmas_jax.training import cpu

FLAGS = flags.FLAGS
flags.DEFINE_list(
  "families",
  [
    "synthetic",
    "linear_gaussian",
    "nonlinear",
    "lorenz",
    "lorenz_whitened",
    "independent",
    "ring",
    "torus",
    "sequence",
    "calcium",
  ],
  "Families to run (nmas_jax.data.synthetic.FAMILIES, and lorenz_whitened: the Lorenz "
  "family with its states whitened, make_lorenz(whiten=True)).",
)
flags.DEFINE_list("decoders", ["linear", "mlp"], "Decoders to run.")
flags.DEFINE_integer("grids", 2, "Grids per family to run (the first N of GRIDS).", lower_bound=1)
flags.DEFINE_integer("seeds", None, "Seeds (default: the sweep's default).")
flags.DEFINE_integer("steps", None, "Training steps (default: the sweep's default).")
flags.DEFINE_integer(
  "population",
  1,
  "Members per model (the sweep's --population; the per-family table only).",
  lower_bound=1,
)
flags.DEFINE_integer(
  "data_seed",
  0,
  "--lfads_trials: the seed of the Lorenz trials "
  "(make_lorenz_trials(seed=...), the sweep's --data_seed).",
)
flags.DEFINE_integer(
  "lr_half_life",
  None,
  "--lfads_trials: the sweep's --lr_half_life (default: LFADS_SETTINGS's; 0 for a constant rate).",
)
flags.DEFINE_integer(
  "co_dim",
  None,
  "--lfads_trials: LFADS's --co_dim (default: LFADS_ONLY's; 0 turns the controller off).",
)
flags.DEFINE_bool("write", False, "Write the table into docs/validation.md.")
flags.DEFINE_integer(
  "draws",
  0,
  "Validate over N fresh draws per family instead (experiments/calibration.py: data seeds "
  "from 1000, never used to choose a default; every decoder of --decoders in one sweep); "
  "--write puts the summary into docs/validation.md.",
  lower_bound=0,
)
flags.DEFINE_bool(
  "only_rows", False, "--draws: run nothing; the table of the draws --rows already holds."
)
flags.DEFINE_string(
  "rows",
  "",
  "--draws: a JSON-lines file each finished draw's rows are appended to; draws already in it "
  "are not run again (resume or extend a validation).",
)
flags.DEFINE_bool(
  "refresh_comparators",
  False,
  "--draws with --rows: first recompute the standard estimators of the draws in --rows on "
  "their regenerated data (no training), then the table as --only_rows.",
)
flags.DEFINE_bool("scaling", False, "Check the --neuron_counts axis instead (see above).")
flags.DEFINE_bool(
  "lfads_trials", False, "Run the LFADS comparison on lorenz_trials instead (see above)."
)

LFADS_LATENTS = (2, 3, 4, 6)
LFADS_SETTINGS = dict(steps=4000, seeds=2, batch_size=32, learning_rate=5e-3, lr_half_life=2000)
LFADS_ONLY = dict(co_dim=2)  # the controller: docs/notes/2026-11-28-dimension.md
SMOOTHING_WIDTHS = (1, 2, 4, 8)  # Gaussian std in bins
SCALING_LATENTS = (2, 4, 8, 16, 32, 64)
SCALING_COUNTS = (10, 20, 40, 80)

# Two grids per family: neither starts at the truth, both hold latents above it.
GRIDS = {
  "synthetic": ((10, 25, 50, 75, 150), (8, 12, 16, 24, 32, 48)),
  "linear_gaussian": ((10, 25, 50, 75, 150), (5, 8, 12, 20, 30, 45, 60)),
  "nonlinear": ((3, 6, 12, 25, 50), (2, 4, 8, 16, 32)),
  "lorenz": ((1, 2, 3, 4, 6, 8, 12), (2, 3, 5, 8)),
  "lorenz_whitened": ((1, 2, 3, 4, 6, 8, 12), (2, 3, 5, 8)),
  "independent": ((1, 2, 4, 8), (3, 6, 12)),
  "ring": ((1, 2, 3, 4, 6, 8), (3, 5, 8)),
  "torus": ((1, 2, 3, 4, 6, 8), (2, 5, 8)),
  "sequence": ((1, 2, 3, 4, 6, 8), (3, 5, 8)),
  "calcium": ((1, 2, 3, 4, 6, 8, 12), (2, 5, 10, 20)),
}
MARKERS = ("<!-- validate:begin -->", "<!-- validate:end -->")
DRAW_MARKERS = ("<!-- draws:begin -->", "<!-- draws:end -->")


def expected(family: str, decoder: str, truth: int, grid) -> str:
  """What the rule should answer, as text ('-' where the question has no such answer):
  `calibration.expected`'s grid answers."""
  return " or ".join(map(str, calibration.expected(family, decoder, truth, grid))) or "-"


def run_one(family: str, decoder: str, grid, log) -> list[dict]:
  from nmas_jax import DimensionSweep
  from nmas_jax.data import synthetic
  from nmas_jax.evaluation import dimension

  ds = (
    lorenz.make_lorenz(whiten=True) if family == "lorenz_whitened" else synthetic.FAMILIES[family]()
  )
  extra = {k: v for k, v in (("seeds", FLAGS.seeds), ("steps", FLAGS.steps)) if v is not None}
  extra["population"] = FLAGS.population
  t0 = time.perf_counter()
  est = DimensionSweep(latents=grid, decoder=decoder, verbose=False, **extra).fit(ds)
  seconds = time.perf_counter() - t0
  r = est.results_
  rows = []
  for layer in r["layers"]:
    truth = ds.true_latent[layer]
    li = r["layers"].index(layer)
    oracle = (
      "-"
      if ds.rates_LTN is None
      else dimension.choose(
        grid, dimension.oracle_gains(ds.x_LTN[li], ds.rates_LTN[li], grid, ds.counts)
      )
    )
    want = expected(family, decoder, truth, grid)
    got = r["optimal_latent"][layer]
    lo, hi = r["optimal_latent_interval"][layer]
    ok = "-" if want == "-" else ("yes" if str(got) in want.split(" or ") else "no")
    late = sum(m.get("converged") is False for m in r["models"] if m["layer"] == layer)
    rows.append(
      dict(
        family=family,
        decoder=decoder,
        grid=",".join(map(str, grid)),
        layer=layer,
        seeds=len(r["seeds"]),
        steps=max(m["stopped_at_step"] for m in r["models"] if m["layer"] == layer),
        unconverged=late,
        truth=truth,
        expected=want,
        chosen=got,
        interval=f"{lo}-{hi}",
        inside="yes"
        if want == "-" or any(lo <= int(w) <= hi for w in want.split(" or "))
        else "no",
        ok=ok,
        knee=r["knee_latent"][layer],
        one_se=r["one_se_latent"][layer],
        detectable=r["detectable_latent"][layer],
        pca=r["baseline_optimal_latent"]["pca"][layer],
        fa=r["baseline_optimal_latent"]["fa"][layer],
        oracle=oracle,
        seconds=round(seconds),
      )
    )
    # Printed, not in the table: the chosen model against PCA and FA on the test block.
    tc = r["test_comparison"][layer]
    test = {
      f"test_{m}": "-" if tc.get(m) is None else f"{tc[m]:.4g}" for m in ("model", "pca", "fa")
    }
    log(
      " | ".join(f"{k}={v}" for k, v in {**rows[-1], "test_metric": tc["metric"], **test}.items())
    )
  return rows


def table(rows: list[dict]) -> str:
  cols = [
    "family",
    "decoder",
    "grid",
    "seeds",
    "steps",
    "unconverged",
    "layer",
    "truth",
    "expected",
    "chosen",
    "ok",
    "interval",
    "inside",
    "knee",
    "one_se",
    "detectable",
    "pca",
    "fa",
    "oracle",
    "seconds",
  ]
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
  return "\n".join(lines)


def scaling_rows(log) -> list[dict]:
  """One row per generator: the chosen dimension against the neuron count."""
  from nmas_jax import DimensionSweep, data
  from nmas_jax.data import synthetic

  cases = [
    (
      "fixed: family i, 7 signals",
      7,
      synthetic.make_linear_gaussian(true_latents=(7,), neurons=200, time=2000, seed=11),
    ),
    (
      "power law: alpha 1, 100 signals",
      None,
      data.as_dataset(synthetic.power_law_activity(1.0, neurons=200, time=2000, dims=100, seed=12)),
    ),
  ]
  rows = []
  for name, truth, ds in cases:
    extra = {k: v for k, v in (("seeds", FLAGS.seeds), ("steps", FLAGS.steps)) if v is not None}
    t0 = time.perf_counter()
    est = DimensionSweep(
      latents=SCALING_LATENTS,
      neuron_counts=SCALING_COUNTS,
      baselines=("pca", "fa", "lds"),
      verbose=False,
      **extra,
    ).fit(ds)
    sc = est.results_["scaling"]
    row = sc["layers"][est.results_["layers"][0]]
    want = "-" if truth is None else str(min(k for k in SCALING_LATENTS if k >= truth))
    rows.append(
      dict(
        data=name,
        counts=",".join(map(str, sc["counts"])),
        expected_flat_at=want,
        chosen=",".join(map(str, row["chosen"])),
        slope=row["slope"],
        saturates=row["saturates"],
        lds=",".join(map(str, row["lds"])),
        pca=",".join(map(str, row["pca"])),
        fa=",".join(map(str, row["fa"])),
        seeds=len(est.results_["seeds"]),
        seconds=round(time.perf_counter() - t0),
      )
    )
    log(" | ".join(f"{k}={v}" for k, v in rows[-1].items()))
  return rows


def lfads_rows(log) -> list[dict]:
  """LFADS, the autoencoder and smoothed spikes on lorenz_trials (see the module docstring)."""
  import numpy as np

  from nmas_jax import DimensionSweep
  from nmas_jax.data import splits
  from nmas_jax.evaluation import baselines, dimension

  ds = lorenz.make_lorenz_trials(seed=FLAGS.data_seed)
  settings = {
    **LFADS_SETTINGS,
    **{
      k: v
      for k, v in (
        ("seeds", FLAGS.seeds),
        ("steps", FLAGS.steps),
        ("lr_half_life", FLAGS.lr_half_life),
      )
      if v is not None
    },
  }
  lfads_only = {**LFADS_ONLY, **({} if FLAGS.co_dim is None else {"co_dim": FLAGS.co_dim})}
  rows, prep = [], None
  for model in ("lfads", "autoencoder"):
    t0 = time.perf_counter()
    est = DimensionSweep(
      model=model,
      latents=LFADS_LATENTS,
      verbose=False,
      **settings,
      **(lfads_only if model == "lfads" else {}),
    ).fit(ds)
    r, layer = est.results_, est.results_["layers"][0]
    tc, (lo, hi) = r["test_comparison"][layer], r["optimal_latent_interval"][layer]
    rows.append(
      dict(
        method=model,
        chosen=r["optimal_latent"][layer],
        interval=f"{lo}-{hi}",
        test_cosmooth_bps=_round(tc.get("model")),
        test_rates_r2=_round(tc.get("test_rates_r2")),
        pca_at_chosen=_round(tc.get("pca")),
        fa_at_chosen=_round(tc.get("fa")),
        seconds=round(time.perf_counter() - t0),
      )
    )
    log(" | ".join(f"{k}={v}" for k, v in rows[-1].items()))
    prep = splits.prepare(ds, est.config_)
  t0 = time.perf_counter()
  tr, va, te = prep.train_block()[0], prep.flat("valid")[0], prep.flat("test")[0]
  valid, test = {}, {}
  for w in SMOOTHING_WIDTHS:
    scores = []
    for s in range(prep.heldout_SLN.shape[0]):
      held = prep.heldout_SLN[s, 0]
      p = baselines.smoothing_cosmooth(tr, np.concatenate([va, te]), held, w, prep.window)
      scores.append(
        [
          metrics.bits_per_spike(p[: len(va)][:, held], va[:, held]),
          metrics.bits_per_spike(p[len(va) :][:, held], te[:, held]),
        ]
      )
    valid[w], test[w] = np.mean(scores, axis=0)
  best = max(valid, key=valid.get)
  rows.append(
    dict(
      method=f"smoothed spikes (best width {best} bins on validation)",
      chosen="-",
      interval="-",
      test_cosmooth_bps=_round(test[best]),
      test_rates_r2="-",
      pca_at_chosen="-",
      fa_at_chosen="-",
      seconds=round(time.perf_counter() - t0),
    )
  )
  oracle = np.mean(
    [
      metrics.bits_per_spike(prep.flat("test", rates=True)[0][:, h], te[:, h])
      for h in prep.heldout_SLN[:, 0]
    ]
  )
  # The rule applied to the true rates (what it would answer if the model knew them).
  oracle_k = dimension.choose(
    LFADS_LATENTS, dimension.oracle_gains(ds.x_LTN[0], ds.rates_LTN[0], LFADS_LATENTS, ds.counts)
  )
  rows.append(
    dict(
      method="true rates (ceiling; chosen: the rule on them)",
      chosen=oracle_k,
      interval="-",
      test_cosmooth_bps=_round(oracle),
      test_rates_r2=1.0,
      pca_at_chosen="-",
      fa_at_chosen="-",
      seconds=0,
    )
  )
  return rows


def _round(x, digits: int = 3):
  return "-" if x is None else round(float(x), digits)


def main(argv):
  del argv
  if FLAGS.population > 1 and (FLAGS.draws or FLAGS.scaling or FLAGS.lfads_trials):
    print(
      f"error: --population={FLAGS.population} runs with the per-family table only: drop "
      "--draws, --scaling and --lfads_trials, or --population",
      file=sys.stderr,
    )
    sys.exit(2)
  cpu.tune()
  log = lambda s: print(s, flush=True)
  t0 = time.perf_counter()
  if FLAGS.scaling or FLAGS.lfads_trials:
    rows = scaling_rows(log) if FLAGS.scaling else lfads_rows(log)
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
      print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    print(
      f"\n`python -m experiments.validate {' '.join(sys.argv[1:])}`: "
      f"{(time.perf_counter() - t0) / 60:.0f} min."
    )
    return
  if FLAGS.draws:
    if FLAGS.refresh_comparators:
      calibration.refresh_comparators(FLAGS.rows, log)
    rows = calibration.run(
      FLAGS.families,
      FLAGS.decoders,
      FLAGS.draws,
      log,
      FLAGS.rows,
      FLAGS.only_rows or FLAGS.refresh_comparators,
    )
    text = calibration.summary(rows) + "\n\n" + stamp((time.perf_counter() - t0) / 60)
    markers = DRAW_MARKERS
  else:
    rows = []
    for family in FLAGS.families:
      for decoder in FLAGS.decoders:
        for grid in GRIDS[family][: FLAGS.grids]:
          rows += run_one(family, decoder, grid, log)
    text, markers = table(rows) + "\n\n" + stamp((time.perf_counter() - t0) / 60), MARKERS
  print("\n" + text)
  if FLAGS.write:
    path = os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "validation.md"
    )
    doc = open(path, encoding="utf-8").read()
    pattern = re.escape(markers[0]) + ".*?" + re.escape(markers[1])
    with open(path, "w", encoding="utf-8") as f:
      f.write(re.sub(pattern, lambda _: f"{markers[0]}\n{text}\n{markers[1]}", doc, flags=re.S))


def stamp(minutes: float) -> str:
  """The command, date, versions and machine of this run, for the table it wrote."""
  import datetime
  import platform

  import flax
  import jax
  import optax

  device = jax.devices()[0]
  return (
    f"`python -m experiments.validate {' '.join(sys.argv[1:])}`, "
    f"{datetime.date.today().isoformat()}, {minutes:.0f} min on {os.cpu_count()} CPU cores "
    f"({platform.machine()}), device {device.platform} ({device.device_kind}); "
    f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}."
  )


if __name__ == "__main__":
  app.run(main)
