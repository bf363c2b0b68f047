"""The results schema: results.json's content (`results_dict`), its per-model rows, results.csv.

The fields are documented in docs/results.md; `files.SCHEMA_VERSION` changes
when they change incompatibly.
"""

from __future__ import annotations

import csv
import dataclasses
from collections import defaultdict
from typing import Any

import numpy as np

from nmas_jax import files
from nmas_jax.config import BASELINES

CSV_FIELDS = (
  "layer",
  "latent",
  "seed",
  "decoder",
  "train_loss",
  "valid_mse",
  "valid_loss",
  "valid_r2",
  "valid_r2_pooled",
  "valid_bps",
  "cosmooth_mse",
  "cosmooth_r2",
  "cosmooth_r2_pooled",
  "cosmooth_bps",
  "test_mse",
  "test_r2",
  "test_r2_pooled",
  "test_bps",
  "test_cosmooth_mse",
  "test_cosmooth_r2",
  "test_cosmooth_r2_pooled",
  "test_cosmooth_bps",
  "rates_r2",
  "test_rates_r2",
  "seed_consistency_r2",
  "few_shot_r2",
  "best_step",
  "converged",
  "stopped_at_step",
  "diverged_at_step",
  "neuron_count",
)


def results_dict(prep, cfg, out) -> dict[str, Any]:
  """The content of results.json for a `splits.Prepared`, `config.Settings` and
  `sweep.SweepOutput`."""
  dataset = prep.dataset
  diverged = out.diverged_at if out.diverged_at is not None else np.asarray(out.state.diverged_at)
  entries = []
  for i in range(len(out.table)):
    entries.append(
      {
        "layer": dataset.layer_names[out.table.layer[i]],
        "latent": int(out.table.latent[i]),
        "seed": int(out.table.seed[i]),
        **({"fold": int(out.table.seed[i]) % cfg.neuron_folds} if cfg.neuron_folds else {}),
        "train_loss": _num(out.train_loss[i]),
        "valid_mse": _num(out.valid["valid/mse"][i]),
        "valid_loss": _num(out.valid["valid/loss"][i]),
        "diverged_at_step": int(diverged[i]) if diverged[i] >= 0 else None,
      }
    )
    if cfg.neuron_counts:
      entries[-1]["neuron_count"] = int(out.table.count[i]) or None
    if out.table.bands.shape[1]:  # --model=multiscale: latents per band (latent: their total)
      entries[-1]["bands"] = out.table.bands[i].tolist()
    if out.table.decoder.shape[1]:  # a sweep of several decoders: this model's
      entries[-1]["decoder"] = cfg.decoders[out.table.decoder[i, 0]]
    if cfg.population > 1:  # the member; once chosen, the winner's final hyper-parameters
      entries[-1]["member"] = int(out.table.member[i])
    if out.population:
      won = out.population["members"][out.population["winners"][i]]
      entries[-1].update({k: won[k][-1] for k in out.population["ranges"]})
    if out.best_step is not None:
      entries[-1].update(
        best_step=int(out.best_step[i]),
        converged=bool(out.converged[i]),
        stopped_at_step=int(out.stopped_at[i]),
      )
  res = {
    "schema_version": files.SCHEMA_VERSION,
    "dataset": dataset.name,
    "latents": list(map(int, cfg.latents)),
    "layers": list(dataset.layer_names),
    "seeds": list(range(cfg.heldout_sets)),
    "neuron_folds": cfg.neuron_folds,
    "steps": cfg.steps,
    "decoder": cfg.decoder,
    "model": cfg.model,
    "likelihood": prep.likelihood,
    "heldout_neurons": cfg.heldout_neurons,
    "blocks": {
      "train": [0, prep.t_train],
      "valid": [prep.t_train, prep.t_valid],
      "test": [prep.t_valid, dataset.num_time],
      "window": prep.window,
      "trial_length": dataset.trial_length or None,
    },
    "heldout_neuron_indices": {
      f"seed {s}": {
        n: np.flatnonzero(prep.heldout_SLN[s, l]).tolist()
        for l, n in enumerate(dataset.layer_names)
      }
      for s in range(prep.heldout_SLN.shape[0])
    },
    "normalize": {n: v["method"] for n, v in prep.normalization.items()},
    "dropped_neurons": prep.dropped,
    "notes": list(prep.notes),
    "config": dataclasses.asdict(cfg),
    "data": {"num_time": dataset.num_time, "num_neurons": dataset.num_neurons, **dataset.meta},
    "models": entries,
    "seconds": round(out.seconds, 2),
    "compile_seconds": round(out.compile_seconds, 2),
    "complete": out.complete,
    "evaluated_step": out.step,
  }
  if out.population:
    res["population"] = out.population
  if out.stopped:
    res["stopped"] = out.stopped
  if dataset.true_latent is not None:
    res["true_latent"] = {n: k for n, k in dataset.true_latent.items() if n in dataset.layer_names}
  return res


def _num(x) -> float | None:
  """JSON-safe float: NaN/Inf become null."""
  x = float(x)
  return x if np.isfinite(x) else None


def merge_into_results(results: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
  """Adds evaluate_sweep's fields to results_dict's output (per-model metrics into `models`)."""
  for entry, m in zip(results["models"], ev["per_model"]):
    entry.update({k: (v if np.isfinite(v) else None) for k, v in m.items()})
  results.update({k: v for k, v in ev.items() if k != "per_model"})
  return results


def write_csv(path: str, results: dict[str, Any]) -> None:
  """One row per model."""

  def write(f):
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for m in results["models"]:
      w.writerow({k: ("" if m.get(k) is None else m.get(k)) for k in CSV_FIELDS})

  files.atomic_write(path, write)


def curves(results: dict[str, Any], field: str = "valid_mse") -> dict[str, dict[int, list[float]]]:
  """{layer: {latent: [value per seed]}}, skipping missing (diverged) values, the models of
  the --neuron_counts axis (`neuron_count` set), of --model=multiscale (`bands` set: their
  totals repeat; `dimension.layers` has them per combination) and of any decoder but the first
  listed (the one `optimal_latent` is of)."""
  out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
  first = first_decoder(results)
  for m in results["models"]:
    if (
      m.get(field) is not None
      and m.get("neuron_count") is None
      and m.get("bands") is None
      and m.get("decoder", first) == first
    ):
      out[m["layer"]][m["latent"]].append(m[field])
  return out


def first_decoder(results: dict[str, Any]) -> str:
  """The first listed decoder (the one `optimal_latent` and `dimension` are of); "" for none."""
  return str(results.get("decoder") or "").split(",")[0]


def dimension_metric(results: dict[str, Any]) -> str:
  return results.get("dimension", {}).get("metric", "valid_mse")


def baseline_methods(results: dict[str, Any]) -> list[str]:
  """The baselines a results dict has metrics of, in `config.BASELINES` order."""
  rows = results.get("baselines") or []
  return [m for m in BASELINES if any(k.startswith(f"{m}_") for r in rows for k in r)]
