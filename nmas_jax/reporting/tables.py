"""What the command line prints at the end of a sweep: the table of choices per layer, the scaling
lines and the advice on unconverged models (report.md reuses them)."""

from __future__ import annotations

from typing import Any

import numpy as np

from nmas_jax.evaluation import dimension
from nmas_jax.reporting import results as results_lib
from nmas_jax.reporting.results import curves, dimension_metric


def interval(results: dict[str, Any], layer: str) -> str:
  iv = (results.get("optimal_latent_interval") or {}).get(layer)
  return "-" if iv is None else f"{iv[0]}-{iv[1]}"


def bands_table(results: dict[str, Any]) -> str:
  """--model=multiscale: per layer, the chosen count per band with its interval, and the total."""
  dim = results["dimension"]
  taus = dim["timescales"]
  true = results.get("true_latent") or {}
  lines = [
    f"held-out {dim['metric']}, validation block: latents per timescale band "
    f"(tau = {', '.join(map(str, taus))} bins)",
    f"{'layer':>10} "
    + "".join(f" {'tau=' + str(t):>12}" for t in taus)
    + f" {'total':>6} {'5-95%':>6}"
    + (f" {'true':>6}" if true else ""),
  ]
  for layer in results["layers"]:
    bands = results["optimal_latent_bands"][layer]
    iv = results["optimal_latent_bands_interval"][layer]
    row = f"{layer:>10} " + "".join(f" {f'{b} ({lo}-{hi})':>12}" for b, (lo, hi) in zip(bands, iv))
    row += f" {results['optimal_latent'][layer]:>6} {interval(results, layer):>6}"
    lines.append(row + (f" {true.get(layer, '-'):>6}" if true else ""))
  return "\n".join(lines)


def table(results: dict[str, Any], field: str | None = None) -> str:
  """A text table: rows are layers, columns latent sizes (validation block, mean over seeds),
  then the chosen dimension, its bootstrap interval and the alternatives (multiscale:
  `bands_table`)."""
  if results.get("optimal_latent_bands"):
    return bands_table(results)
  field = field or dimension_metric(results)
  by_layer = curves(results, field)
  latents = results["latents"]
  head = f"{'layer':>10} " + " ".join(f"{'k=' + str(k):>9}" for k in latents)
  extra = [
    ("chosen", "optimal_latent"),
    ("5-95%", None),
    ("knee", "knee_latent"),
    ("1-SE", "one_se_latent"),
    ("detect", "detectable_latent"),
  ]
  base = results.get("baseline_optimal_latent") or {}
  methods = results_lib.baseline_methods(results)
  extra += [(m.upper(), m) for m in methods if base.get(m)]
  extra += [("true", "true_latent")] if results.get("true_latent") else []
  head += "".join(f" {h:>6}" for h, _ in extra)
  lines = [f"held-out {field}, validation block (mean over seeds)", head]
  for layer in results["layers"]:
    cells = [by_layer[layer][k] for k in latents]
    row = f"{layer:>10} " + " ".join(
      f"{np.mean(c):>9.4g}" if c else f"{'diverged':>9}" for c in cells
    )
    for _, key in extra:
      if key is None:
        v = interval(results, layer)
      else:
        v = (base.get(key) if key in methods else results.get(key) or {}).get(layer, "-")
      row += f" {str('-' if v is None else v):>6}"
    lines.append(row)
  return "\n".join(lines)


def fmt(x) -> str:
  return "-" if x is None or not np.isfinite(x) else f"{x:.4g}"


def scaling_methods(results: dict[str, Any]) -> list[str]:
  """The baselines with a choice per count in `scaling`."""
  row = next(iter(results["scaling"]["layers"].values()))
  return [m for m in results_lib.baseline_methods(results) if m in row]


def verdict(row: dict[str, Any]) -> str:
  k = row["chosen"]
  return "saturates" if row["saturates"] else "still rising" if k[-1] > k[-2] else "falls"


def scaling_lines(results: dict[str, Any]) -> list[str]:
  """The --neuron_counts table: chosen dimension per layer and count, and whether it saturates."""
  sc = results.get("scaling")
  if not sc:
    return []
  methods = scaling_methods(results)
  lines = [
    f"chosen dimension against held-in neurons ({', '.join(map(str, sc['counts']))}); "
    f"saturates when {sc['saturates_when']}"
  ]
  for layer, row in sc["layers"].items():
    base = "; ".join(f"{m.upper()} {','.join(map(str, row[m]))}" for m in methods)
    lines.append(
      f"  layer {layer}: {','.join(map(str, row['chosen']))} (slope "
      f"{row['slope'] if row['slope'] is not None else '-'}; {verdict(row)})"
      + (f"; {base}" if base else "")
    )
  return lines


def unconverged_advice(results: dict[str, Any], code: str = "") -> str | None:
  """One line on the models the --steps cap stopped before they converged (None when there are
  none): smaller latents often train slower, so stopping early biases the estimate upwards."""
  models = results.get("models", [])
  late = [m for m in models if m.get("converged") is False]
  if not late:
    return None
  steps = results.get("steps") or 0
  return (
    f"{len(late)} of {len(models)} models were stopped by the {code}--steps={steps}{code} cap "
    f"before they converged (converged: false); smaller latents often train slower, so the "
    f"estimate can come out too large. Rerun the same command with a larger {code}--steps{code} "
    f"(e.g. {code}--steps={2 * steps}{code}): the workdir resumes from its last checkpoint and "
    f"trains only the models that had not converged."
  )


# Decoders whose readout is linear in the latents: their dimension is a linear one.
LINEAR_DECODERS = ("linear",)


def near_bar(results: dict[str, Any], layer: str) -> tuple[int, float] | None:
  """(k, its gain fraction) when the latent just below the chosen one came within
  `dimension.NEAR_BAR` of the rule's bar: a model there can still escape a plateau late
  (docs/method.md), so longer training might choose it."""
  dim = results.get("dimension") or {}
  d, bar = (dim.get("layers") or {}).get(layer), dim.get("gain_fraction")
  k = (results.get("optimal_latent") or {}).get(layer)
  if not d or bar is None or not k or k not in d.get("latents", []):
    return None
  j = d["latents"].index(k)
  f = d["gain_fraction"][j - 1] if j else None
  return (d["latents"][j - 1], f) if f is not None and bar - dimension.NEAR_BAR <= f < bar else None


def answer_lines(results: dict[str, Any]) -> list[str]:
  """One sentence per layer: the manifold dimension (a nonlinear decoder's choice), the linear
  dimension (a linear decoder's, PCA's and FA's by the same rule), and what their difference
  means. Empty when the sweep chose nothing."""
  by_dec = results.get("optimal_latent_by_decoder") or {}
  ivs = results.get("optimal_latent_interval_by_decoder") or {}
  if not by_dec or results.get("optimal_latent_bands"):
    return []
  base = results.get("baseline_optimal_latent") or {}
  true = results.get("true_latent") or {}
  manifold = [d for d in by_dec if d not in LINEAR_DECODERS]
  lines = []
  for layer in results["layers"]:
    iv = lambda d: (ivs.get(d) or {}).get(layer) or ["-", "-"]
    fmt = lambda d: f"{by_dec[d].get(layer)} (5-95% {iv(d)[0]}-{iv(d)[1]}, {d} decoder)"
    linear = [
      (f"the {d} decoder", by_dec[d].get(layer), f" (5-95% {iv(d)[0]}-{iv(d)[1]})")
      for d in by_dec
      if d in LINEAR_DECODERS
    ]
    linear += [(m.upper(), base[m].get(layer), "") for m in ("pca", "fa") if base.get(m)]
    lin_text = ", ".join(f"{v}{i} by {who}" for who, v, i in linear if v is not None)
    head = f"layer {layer}: "
    if not manifold:
      others = ", ".join(f"{v} by {who}" for who, v, _ in linear[1:] if v is not None)
      lines.append(
        head
        + f"linear dimension {fmt(next(iter(by_dec)))}"
        + (f"; {others}" if others else "")
        + (f" (true {true[layer]})" if layer in true else "")
        + "; sweep --decoder=mlp for the manifold dimension."
      )
      continue
    k = by_dec[manifold[0]].get(layer)
    values = [v for _, v, _ in linear if v is not None]
    if k is None or not values:
      meaning = ""
    elif all(v > k for v in values):
      meaning = (
        ": the linear methods need more dimensions, so the activity lies on a curved manifold"
      )
    elif all(v == k for v in values):
      meaning = (
        ": they agree at this grid's resolution, so a flat (linear) subspace describes the "
        "activity as well as a curved manifold"
      )
    elif all(v >= k for v in values):
      more = " and ".join(who for who, v, _ in linear if v is not None and v > k)
      meaning = (
        f": {more} need{'s' if ' and ' not in more else ''} more dimensions (the others as many "
        "at this grid's resolution), a sign of a curved manifold"
      )
    else:
      meaning = (
        ": a linear method needs fewer dimensions than the nonlinear model, so the manifold "
        "estimate is the less certain one here; read sweep.png"
      )
    lines.append(
      head
      + f"manifold dimension {fmt(manifold[0])}"
      + (f"; linear dimension {lin_text}" if lin_text else "")
      + meaning
      + (f" (true dimension {true[layer]})" if layer in true else "")
      + "."
      + _near_bar_text(results, layer)
    )
  return lines


def _near_bar_text(results: dict[str, Any], layer: str) -> str:
  near = near_bar(results, layer)
  if near is None:
    return ""
  bar, first = results["dimension"]["gain_fraction"], results_lib.first_decoder(results)
  steps = [
    m.get("stopped_at_step") or 0
    for m in results.get("models", [])
    if m.get("layer") == layer and m.get("latent") == near[0] and m.get("decoder", first) == first
  ]
  trained = f"; its models trained on to step {max(steps)} without reaching it" if steps else ""
  return (
    f" With the {first} decoder, latent {near[0]} reached {near[1]:.0%} of the best gain (the "
    f"bar is {bar:.0%}){trained}: a larger --steps could still choose it."
  )
