"""Held-out evaluation that makes a dimensionality claim checkable.

Metrics on the held-out time block: MSE and R2 over all neurons, and
co-smoothing (as in the Neural Latents Benchmark): held-out neurons, never
shown to the encoder, predicted at held-out times. PCA and FA baselines at
the same latent sizes and splits. Then a dimension estimate per layer
(`dimension.choose_dimension`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import models
from nmas_jax.config import Settings
from nmas_jax.data.splits import Prepared
from nmas_jax.evaluation import baselines, batched, comparators, consistency, lds
from nmas_jax.evaluation.estimates import (
  _no_estimate,
  _rule,
  band_estimates,
  baseline_sizes,
  by_decoder,
  dimension_estimates,
  scaling,
)
from nmas_jax.evaluation.metrics import (
  block_losses,
  block_metrics,
  bootstrap_blocks,
  rates_r2,
)
from nmas_jax.training import train
from nmas_jax.training.hooks import fmt_time
from nmas_jax.training.table import ModelTable

# ----------------------------------------------------------------------------
# Metrics on one [time, neurons] block.


# ----------------------------------------------------------------------------
# A whole sweep.


def model_predictions(
  state: train.TrainState,
  table: ModelTable,
  prep: Prepared,
  cfg: Settings,
  block: str = "valid",
  latents: bool = False,
) -> np.ndarray:
  """Every model's predicted means on a time block: [models, time, neurons] (with `latents`,
  its latent trajectory [models, time, latent width] instead)."""
  windows_LVWN = jnp.asarray(prep.windows_LVTN(block))
  mask_MN = jnp.asarray(prep.input_mask_MN(table.layer, table.seed, table.count))
  pred = functools.partial(train.predict, model=models.make_model(cfg, prep.num_neurons))

  @jax.jit
  def one(params_M, i, latent, layer, mask_N):
    params = jax.tree.map(lambda a: a[i], params_M)
    y_VWN, z_VWK = pred(params, latent, windows_LVWN[layer], mask_N)
    if latents:
      return z_VWK.reshape(-1, z_VWK.shape[-1])
    return models.mean_prediction(y_VWN, prep.likelihood).reshape(-1, y_VWN.shape[-1])

  return np.stack(
    [
      np.asarray(
        one(
          state.params,
          i,
          state.latent[i],
          int(table.layer[i]),
          mask_MN[i],
        )
      )
      for i in range(len(table))
    ]
  ).astype(np.float64)


LDS_ITERS = 20  # EM iterations of the linear dynamical system baseline


class Clock:
  """Wall seconds per phase of a run: each `lap` charges the time since the previous lap to the
  named phase (`experiments.bench --phases`)."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self.last = time.perf_counter()

  def lap(self, phase: str) -> None:
    now = time.perf_counter()
    self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self.last
    self.last = now


class Progress:
  """Progress lines of a long phase: `done/total what, elapsed, ETA`, at most one per `every_s`
  seconds and one at the end (at Stringer scale the baselines take minutes after training)."""

  def __init__(self, what: str, total: int, log: Callable[[str], Any], every_s: float = 10.0):
    self.what, self.total, self.log, self.every_s = what, total, log, every_s
    self.done, self.start = 0, time.perf_counter()
    self.last = self.start

  def step(self) -> None:
    self.done += 1
    now = time.perf_counter()
    if now - self.last < self.every_s and self.done < self.total:
      return
    self.last, elapsed = now, now - self.start
    eta = elapsed / self.done * (self.total - self.done)
    self.log(
      f"  {self.done}/{self.total} {self.what}, {fmt_time(elapsed)}"
      + (f", ETA {fmt_time(eta)}" if self.done < self.total else "")
    )


def _baselines(
  prep: Prepared,
  cfg: Settings,
  block_T: np.ndarray,
  fa_iters: int,
  count: int = 0,
  progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[tuple[int, int], tuple]]:
  """The baselines of `cfg.baselines` per (layer, latent): rows of metrics (means over seeds),
  their loss curves {method: [layers, latents, seeds, blocks]} on each seed's held-out neurons,
  and the all-neuron FA fits {(layer, latent): (mean, W, psi)} for `context`. With `count`, each
  seed's baselines see only its --neuron_counts subset of held-in neurons (and no rows' all-neuron
  reconstruction)."""
  train_LTN, valid_LTN, test_LTN = prep.train_block(), prep.flat("valid"), prep.flat("test")
  t_valid, lik, seeds = valid_LTN.shape[1], prep.likelihood, prep.heldout_SLN.shape[0]
  methods, sizes = cfg.baselines, baseline_sizes(cfg)
  shape = (prep.dataset.num_layers, len(sizes), seeds, block_T.max() + 1)
  curves = {m: np.full(shape, np.nan) for m in methods}
  rows, fa_fits = [], {}
  for l, name in enumerate(prep.dataset.layer_names):
    held_x = np.concatenate([valid_LTN[l], test_LTN[l]])
    # Each seed's neurons the baselines see: its held-out ones and its count's inputs.
    keep_SN = prep.heldout_SLN[:, l] | (
      prep.input_mask_MN(np.full(seeds, l), np.arange(seeds), np.full(seeds, count)) > 0
    )
    # Every held-out set's fit at every latent size at once (`batched.layer`, or on the CPU for a
    # small layer its numpy twin `baselines.layer`).
    fit_layer = batched.layer if batched.on_device(train_LTN[l].shape[1]) else baselines.layer
    fits = fit_layer(
      train_LTN[l],
      held_x,
      keep_SN & ~prep.heldout_SLN[:, l],
      tuple(int(k) for k in sizes),
      tuple(m for m in methods if m != "lds"),
      reconstruct=not count,
      fa_iters=fa_iters,
    )
    fa_fits.update({(l, k): f for k, f in fits.pop("fa_fit", {}).items()})
    for j, k in enumerate(sizes):
      row: dict[str, Any] = {"layer": name, "latent": int(k)}
      per_seed = []
      for s in range(seeds):
        held, keep = prep.heldout_SLN[s, l], keep_SN[s]
        p = {m: fits[m][j] for m in methods if m in fits and s == 0}
        p |= {
          f"{m}_cosmooth": fits[f"{m}_cosmooth"][s, j] for m in methods if f"{m}_cosmooth" in fits
        }
        if "lds" in methods and held.any():
          p["lds_cosmooth"] = _widen(
            lds.cosmooth(train_LTN[l][:, keep], held[keep], [held_x[:, keep]], k, LDS_ITERS)[0],
            keep,
          )
        m: dict[str, float] = {}
        for method in methods:
          if s == 0 and method in p:
            rec = block_metrics(p[method][:t_valid], valid_LTN[l], np.zeros_like(held), lik)
            row[f"{method}_valid_mse"], row[f"{method}_valid_r2"] = (
              rec["valid_mse"],
              rec["valid_r2"],
            )
          if held.any():
            pc = np.where(held, p[f"{method}_cosmooth"], np.nan)
            if lik == "poisson":
              pc = np.maximum(pc, 1e-3)  # linear predictions can go negative: floor the rate.
            for block, x in (("valid", valid_LTN[l]), ("test", test_LTN[l])):
              part = pc[:t_valid] if block == "valid" else pc[t_valid:]
              mc = block_metrics(part, x, held, lik, block)
              m.update({f"{method}_{key}": v for key, v in mc.items() if "cosmooth" in key})
            curves[method][l, j, s] = block_losses(pc[:t_valid], valid_LTN[l], held, lik, block_T)
        per_seed.append(m)
      for key in per_seed[0]:
        row[key] = float(np.nanmean([m[key] for m in per_seed]))
      rows.append(row)
    if progress is not None:
      progress.step()
  return rows, curves, fa_fits


def _widen(pred_TK: np.ndarray, keep_N: np.ndarray) -> np.ndarray:
  """Predictions of the kept neurons [T, kept] as [T, neurons], NaN elsewhere."""
  if keep_N.all():
    return pred_TK
  out = np.full((len(pred_TK), len(keep_N)), np.nan)
  out[:, keep_N] = pred_TK
  return out


def _null_losses(prep: Prepared, block_T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The zero-latent null's held-out loss and element count per validation block:
  [layers, seeds, blocks] each (each neuron predicted by its training-block mean)."""
  train_LTN, valid_LTN = prep.train_block(), prep.flat("valid")
  seeds, layers = prep.heldout_SLN.shape[:2]
  null = np.zeros((layers, seeds, block_T.max() + 1))
  count = np.zeros_like(null)
  for l in range(layers):
    pred = np.broadcast_to(train_LTN[l].mean(axis=0), valid_LTN[l].shape)
    for s in range(seeds):
      held = prep.heldout_SLN[s, l]
      null[l, s] = block_losses(pred, valid_LTN[l], held, prep.likelihood, block_T)
      count[l, s] = np.bincount(block_T, minlength=block_T.max() + 1) * held.sum()
  return null, count


def _per_model(
  prep: Prepared, table: ModelTable, held, valid_LTN, pred_valid, pred_test
) -> list[dict[str, float]]:
  """Each model's metrics on the validation and test blocks (and rates_r2 where the true rates
  are known), from its predictions [models, time, neurons] of both blocks; `held(i)` is model
  i's held-out neurons [N]."""
  lik, test_LTN = prep.likelihood, prep.flat("test")
  per_model = [
    {
      **block_metrics(pred_valid[i], valid_LTN[l], held(i), lik, "valid"),
      **block_metrics(pred_test[i], test_LTN[l], held(i), lik, "test"),
    }
    for i, l in enumerate(table.layer)
  ]
  rates_valid, rates_test = prep.flat("valid", rates=True), prep.flat("test", rates=True)
  if rates_valid is not None:  # generated data: the inferred rates against the true ones
    for i, l in enumerate(table.layer):
      per_model[i]["rates_r2"] = rates_r2(pred_valid[i], rates_valid[l])
      per_model[i]["test_rates_r2"] = rates_r2(pred_test[i], rates_test[l])
  return per_model


def _linear_fields(prep: Prepared, cfg: Settings, block_T, fa_iters: int, log, clock: Clock):
  """(baseline rows, baseline curves, the baselines' `Progress`, results fields of the linear
  methods: baselines, participation ratio, PCA's 90% count, `context`)."""
  log(
    f"baselines: {', '.join(m.upper() for m in cfg.baselines) or 'none'} at "
    f"{len(baseline_sizes(cfg))} "
    f"latent sizes x {prep.dataset.num_layers} layers x {cfg.heldout_sets} held-out sets"
  )
  counts = cfg.neuron_counts if cfg.neuron_counts and not prep.shared else ()
  progress = Progress(
    "layers' baselines" + (" (all counts)" if counts else ""),
    prep.dataset.num_layers * (1 + len(counts)),
    log,
  )
  rows, base_curves, fa_fits = _baselines(prep, cfg, block_T, fa_iters, progress=progress)
  clock.lap("baselines")
  train_LTN, names = prep.train_block(), prep.dataset.layer_names
  t0 = time.perf_counter()
  ctx = comparators.context(prep, cfg, fa_iters, fa_fits)
  log(f"spectrum and FA's shared dimension: {fmt_time(time.perf_counter() - t0)}")
  fields = {
    "baselines": rows,
    "participation_ratio": {
      n: round(baselines.participation_ratio(train_LTN[l]), 3) for l, n in enumerate(names)
    },
    "pca_dims_90": {n: baselines.dims_for_variance(train_LTN[l], 0.9) for l, n in enumerate(names)},
    **ctx,
  }
  clock.lap("comparators")
  return rows, base_curves, progress, fields


def evaluate_sweep(
  prep: Prepared, cfg: Settings, out, fa_iters: int = 100, log=print, clock: Clock | None = None
) -> dict[str, Any]:
  """Full evaluation of a `sweep.SweepOutput` on the validation and test blocks, the PCA and FA
  baselines, and the dimension estimates: the fields of results.json. `clock` gets the laps
  "predictions", "baselines" and "comparators"."""
  clock = clock or Clock()
  table, lik = out.table, prep.likelihood
  valid_LTN = prep.flat("valid")
  block_T = bootstrap_blocks(valid_LTN.shape[1])
  pred_valid = model_predictions(out.state, table, prep, cfg, "valid")
  pred_test = model_predictions(out.state, table, prep, cfg, "test")
  held = lambda i: prep.heldout_SLN[table.seed[i], table.layer[i]]
  per_model = _per_model(prep, table, held, valid_LTN, pred_valid, pred_test)
  clock.lap("predictions")
  names = prep.dataset.layer_names
  rows, base_curves, progress, linear = _linear_fields(prep, cfg, block_T, fa_iters, log, clock)
  result = {"per_model": per_model, **linear}
  # A decoder's models of every held-in neuron (the rest: --neuron_counts); the first's lead.
  of = lambda d: np.flatnonzero((table.count == 0) & table.of_decoder(d))
  part = lambda d: (table.take(of(d)), [per_model[i] for i in of(d)])
  main = of(0)
  sub, sub_per_model = part(0)
  if not prep.cosmooth:
    log(
      "warning: no neurons are held out (--heldout_neurons=0): reconstruction error keeps "
      "falling with the latent size and is not a dimension estimate, so none is reported"
    )
    return {**result, **_no_estimate(prep, cfg, sub, out, sub_per_model)}
  ok = np.asarray(out.state.diverged_at) < 0

  def model_curves(c: int, decoder: int = 0) -> np.ndarray:
    """[layers, latents, seeds, blocks] of the models of count c (and that decoder)."""
    curves = np.full((len(names), len(cfg.latents), cfg.heldout_sets, block_T.max() + 1), np.nan)
    for i in np.flatnonzero(ok & (table.count == c) & table.of_decoder(decoder)):
      l, j, s = table.layer[i], cfg.latents.index(int(table.latent[i])), table.seed[i]
      curves[l, j, s] = block_losses(pred_valid[i], valid_LTN[l], held(i), lik, block_T)
    return curves

  null, count = _null_losses(prep, block_T)
  if table.bands.shape[1]:  # a latent size per band: the rule over band combinations
    result.update(
      band_estimates(
        prep, cfg, sub, sub_per_model, pred_valid[main], ok[main], base_curves, null, count, block_T
      )
    )
    return result
  estimate = lambda d: dimension_estimates(
    prep, cfg, *part(d), model_curves(0, d), base_curves, rows, null, count
  )
  result.update(estimate(0))
  result.update(by_decoder(cfg, result, estimate))
  result["consistency"], scores = consistency.for_sweep(
    out.state, sub, main, prep, cfg, model_predictions
  )
  for j, fields in scores.items():
    per_model[main[j]].update({k: np.nan if v is None else v for k, v in fields.items()})
  if cfg.neuron_counts and not prep.shared:
    log(f"neuron counts: baselines at {len(cfg.neuron_counts)} more counts")
    by_count = {
      c: (model_curves(c), _baselines(prep, cfg, block_T, fa_iters, c, progress)[1])
      for c in cfg.neuron_counts
    }
    by_count[0] = (model_curves(0), base_curves)
    result["scaling"] = scaling(prep, cfg, by_count, null, count)
  return result


def baseline_choices(
  prep: Prepared, cfg: Settings, fa_iters: int = 100
) -> dict[str, dict[str, int]]:
  """{method: {layer: chosen latent}}: the dimension rule on each baseline of `cfg.baselines`
  alone, with no model trained (needs held-out neurons)."""
  if not prep.cosmooth:
    raise ValueError("baseline_choices needs held-out neurons (heldout_neurons > 0)")
  block_T = bootstrap_blocks(prep.flat("valid").shape[1])
  _, curves, _ = _baselines(prep, cfg, block_T, fa_iters)
  null, count = _null_losses(prep, block_T)
  return {
    m: {
      n: _rule(cfg, curves[m][l], null[l], count[l])["optimal"]
      for l, n in enumerate(prep.dataset.layer_names)
    }
    for m in cfg.baselines
  }


def chosen_gain(
  prep: Prepared, cfg: Settings, state: train.TrainState, table: ModelTable, chosen: list[int]
) -> float:
  """Held-out gain per element over the null on the validation block at each layer's `chosen`
  latent (0 where it is 0), mean over layers and seeds: `DimensionSweep.score` on new data."""
  valid_LTN = prep.flat("valid")
  block_T = bootstrap_blocks(valid_LTN.shape[1])
  null, count = _null_losses(prep, block_T)
  preds = model_predictions(state, table, prep, cfg, "valid")
  per_layer = []
  for l, k in enumerate(chosen):
    gains = [0.0]
    if k:
      gains = []
      for i in np.flatnonzero((table.layer == l) & (table.latent == k) & (table.count == 0)):
        s = table.seed[i]
        loss = block_losses(
          preds[i], valid_LTN[l], prep.heldout_SLN[s, l], prep.likelihood, block_T
        )
        gains.append((null[l, s].sum() - loss.sum()) / count[l, s].sum())
    per_layer.append(np.mean(gains))
  return float(np.mean(per_layer))
