"""Figures a sweep leaves behind: sweep.png (held-out metric against latent size), spectrum.png
(reliable-variance spectra) and decoding.png."""

from __future__ import annotations

import io
from collections import defaultdict
from typing import Any

import numpy as np

from nmas_jax import files
from nmas_jax.reporting.results import curves, dimension_metric


def metric_label(metric: str) -> str:
  kind = "co-smoothing (held-out neurons)" if metric.startswith("cosmooth") else "held-out time"
  unit = {"mse": "MSE", "bps": "bits/spike", "r2": "R2"}[metric.split("_")[-1]]
  return f"{kind} {unit}"


def plot_sweep(results: dict[str, Any]):
  """Per layer: held-out metric (validation block) vs latent size for the model (mean +- SE
  over seeds) and each baseline.

  The chosen dimension is a solid line with its bootstrap interval shaded, the
  true one (synthetic data) dotted; a choice of 0 is written in the panel.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  metric = dimension_metric(results)
  layers = results["layers"]
  cols = min(3, len(layers))
  rows = -(-len(layers) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
  by_layer = curves(results, metric)
  base = defaultdict(dict)
  for r in results.get("baselines", []):
    base[r["layer"]][r["latent"]] = r
  true_latent = results.get("true_latent") or {}
  for ax, layer in zip(axes.flat, layers):
    ks = [k for k in sorted(results["latents"]) if by_layer[layer][k]]
    vals = [np.asarray(by_layer[layer][k]) for k in ks]
    mean = [v.mean() for v in vals]
    se = [v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0 for v in vals]
    ax.errorbar(ks, mean, yerr=se, fmt="o-", capsize=3, label="LSTM AE")
    for method, style in (("pca", "s--"), ("fa", "^--"), ("lds", "v--")):
      key = f"{method}_{metric}"
      pts = [
        (k, base[layer][k][key]) for k in sorted(base[layer]) if base[layer][k].get(key) is not None
      ]
      if pts:
        ax.plot(*zip(*pts), style, alpha=0.8, label=method.upper())
    chosen = results.get("optimal_latent", {}).get(layer)
    interval = (results.get("optimal_latent_interval") or {}).get(layer)
    if interval is not None and interval[1] > 0:
      lo = interval[0] if interval[0] > 0 else min(results["latents"])
      ax.axvspan(lo, interval[1], color="k", alpha=0.08, label=f"5-95% {interval[0]}-{interval[1]}")
    if chosen:
      ax.axvline(chosen, color="k", lw=1.2, label=f"chosen {chosen}")
    elif chosen == 0:
      ax.text(0.03, 0.05, "chosen 0: no gain over the null", transform=ax.transAxes, fontsize=8)
    if true_latent.get(layer):
      ax.axvline(
        true_latent[layer], color="tab:green", ls=":", lw=2, label=f"true {true_latent[layer]}"
      )
    ax.set_xscale("log")
    ax.set_xticks(results["latents"])
    ax.set_xticklabels([str(k) for k in results["latents"]], fontsize=8)
    ax.minorticks_off()
    ax.set_title(f"layer {layer}", fontsize=10)
    ax.set_xlabel("latent size")
    ax.set_ylabel(metric_label(metric), fontsize=8)
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(layers) :]:
    ax.axis("off")
  fig.suptitle(
    f"{results['dataset']}: {results['decoder']} decoder, {results['likelihood']} "
    f"likelihood, {results['steps']} steps, {len(results['seeds'])} seed(s)",
    fontsize=10,
  )
  fig.tight_layout()
  return fig


def plot_decoding(results: dict[str, Any]):
  """Held-out layer-decoding accuracy vs latent size (mean, min-max over seeds), with chance."""
  acc = results["layer_accuracy"]
  fig, ax = _axes()
  ks, vals = acc["latents"], [np.asarray(v) for v in acc["accuracy"]]
  mean = [v.mean() for v in vals]
  ax.errorbar(
    ks,
    mean,
    yerr=[[m - v.min() for m, v in zip(mean, vals)], [v.max() - m for m, v in zip(mean, vals)]],
    fmt="o-",
    capsize=3,
    label="shared LSTM AE + logistic regression",
  )
  ax.axhline(acc["chance"], color="gray", ls="--", label=f"chance ({acc['chance']:.2f})")
  ax.set_xscale("log")
  ax.set_xticks(ks)
  ax.set_xticklabels([str(k) for k in ks])
  ax.minorticks_off()
  ax.set_ylim(0, 1.02)
  return _finish(
    fig,
    ax,
    "latent size",
    "held-out layer accuracy",
    f"{results['dataset']}: which layer is this window from?",
  )


def plot_spectrum(results: dict[str, Any]):
  """Each layer's reliable variance against component number on log-log axes, with the fitted
  power law over its fit range."""
  fig, ax = _axes()
  for layer in results["layers"]:
    s = results["spectrum"][layer]
    v = np.asarray(s["reliable_variance"])
    n = np.arange(1, len(v) + 1)
    (line,) = ax.plot(
      n[v > 0],
      v[v > 0],
      ".",
      ms=4,
      label=f"layer {layer}: alpha {s['alpha'] if s['alpha'] is not None else '-'}",
    )
    if s["alpha"] is not None:
      lo, hi = s["fit_range"]
      fit = n[(n >= lo) & (n <= min(hi, len(v)))]
      ax.plot(fit, v[lo - 1] * (fit / lo) ** -s["alpha"], "-", color=line.get_color(), lw=1)
  ax.set_xscale("log")
  ax.set_yscale("log")
  return _finish(
    fig,
    ax,
    "SVCA component",
    "reliable variance (held-out time)",
    f"{results['dataset']}: reliable-variance spectrum",
  )


def plot_scaling(results: dict[str, Any]):
  """Each layer's chosen dimension against the number of held-in neurons on log-log axes (the
  bootstrap interval as bars; a choice of 0 is left out), with its fitted slope."""
  sc = results["scaling"]
  fig, ax = _axes()
  n = np.asarray(sc["counts"], float)
  positive = False
  for layer, row in sc["layers"].items():
    k = np.asarray(row["chosen"], float)
    ok = k > 0
    positive |= bool(ok.any())
    iv = np.asarray(row["interval"], float).reshape(-1, 2)
    line = ax.errorbar(
      n[ok],
      k[ok],
      yerr=[k[ok] - np.maximum(iv[ok, 0], 1), iv[ok, 1] - k[ok]],
      fmt="o-",
      capsize=3,
      label=f"layer {layer}: slope {row['slope'] if row['slope'] is not None else '-'}"
      f"{', saturates' if row['saturates'] else ''}",
    )
    if results.get("true_latent", {}).get(layer):
      ax.axhline(results["true_latent"][layer], color=line[0].get_color(), ls=":", lw=1)
  ax.set_xscale("log")
  if positive:
    ax.set_yscale("log")
  else:
    ax.text(
      0.03,
      0.05,
      "chosen 0 at every count: no gain over the null",
      transform=ax.transAxes,
      fontsize=8,
    )
  ax.set_xticks(n)
  ax.set_xticklabels([str(int(c)) for c in n], fontsize=8)
  ax.minorticks_off()
  return _finish(
    fig,
    ax,
    "held-in neurons (encoder inputs)",
    "chosen dimension",
    f"{results['dataset']}: dimension against neuron count",
  )


def plot_timescales(results: dict[str, Any]):
  """--model=multiscale: per layer, the held-out gain (fraction of the best) over the grid of
  per-band counts: a heat map for two bands (the chosen cell boxed), else gain against total."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  dim, layers = results["dimension"], results["layers"]
  taus = dim["timescales"]
  fig, axes = plt.subplots(1, len(layers), figsize=(4.4 * len(layers), 3.8), squeeze=False)
  for ax, layer in zip(axes.flat, layers):
    d = dim["layers"][layer]
    bands = np.asarray(d["bands"])
    frac = np.array([np.nan if f is None else f for f in d["gain_fraction"]])
    chosen = results["optimal_latent_bands"][layer]
    if len(taus) == 2:
      v0, v1 = sorted(set(bands[:, 0])), sorted(set(bands[:, 1]))
      grid = np.full((len(v1), len(v0)), np.nan)
      for (a, b), f in zip(bands, frac):
        grid[v1.index(b), v0.index(a)] = f
      im = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=1)
      for (a, b), f in zip(bands, frac):
        if np.isfinite(f):
          ax.text(
            v0.index(a),
            v1.index(b),
            f"{f:.2f}",
            ha="center",
            va="center",
            fontsize=7,
            color="w" if f < 0.6 else "k",
          )
      if any(chosen):
        ax.add_patch(
          plt.Rectangle(
            (v0.index(chosen[0]) - 0.5, v1.index(chosen[1]) - 0.5), 1, 1, fill=False, ec="r", lw=2
          )
        )
      ax.set_xticks(range(len(v0)), [str(v) for v in v0])
      ax.set_yticks(range(len(v1)), [str(v) for v in v1])
      ax.set_xlabel(f"latents at tau={taus[0]} bins")
      ax.set_ylabel(f"latents at tau={taus[1]} bins")
      fig.colorbar(im, ax=ax, fraction=0.046, label="gain / best gain")
    else:
      ax.scatter(bands.sum(axis=1), frac, s=12)
      ax.set_xlabel("total latents")
      ax.set_ylabel("gain / best gain")
    ax.set_title(
      f"layer {layer}: chosen {'/'.join(map(str, chosen))} (tau {'/'.join(map(str, taus))})",
      fontsize=9,
    )
  fig.tight_layout()
  return fig


def _axes():
  """One figure with one axes, on the non-interactive backend."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt.subplots(figsize=(5.5, 3.8))


def _finish(fig, ax, xlabel: str, ylabel: str, title: str):
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def save_figure(path: str, fig) -> None:
  import matplotlib.pyplot as plt

  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  plt.close(fig)
  files.atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")
