"""Files a sweep leaves behind: results.json, results.csv, sweep.png, and a text table.

Every file is written to a temporary name and renamed, so a reader never sees
a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from typing import Any, Callable

import numpy as np

CSV_FIELDS = ("layer", "latent", "seed", "train_loss", "valid_mse", "valid_loss", "valid_r2",
              "valid_r2_pooled", "valid_bps", "cosmooth_mse", "cosmooth_r2", "cosmooth_r2_pooled",
              "cosmooth_bps", "diverged_at_step")


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
  """Calls write(file) on a temporary file next to `path`, then renames it into place."""
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
  atomic_write(path, lambda f: json.dump(obj, f, indent=1))


def write_csv(path: str, results: dict[str, Any]) -> None:
  """One row per model."""

  def write(f):
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
    w.writeheader()
    for m in results["models"]:
      w.writerow({k: ("" if m.get(k) is None else m.get(k)) for k in CSV_FIELDS})

  atomic_write(path, write)


def curves(results: dict[str, Any], field: str = "valid_mse") -> dict[str, dict[int, list[float]]]:
  """{layer: {latent: [value per seed]}}, skipping missing (diverged) values."""
  out: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
  for m in results["models"]:
    if m.get(field) is not None:
      out[m["layer"]][m["latent"]].append(m[field])
  return out


def _metric(results: dict[str, Any]) -> str:
  return results.get("dimension", {}).get("metric", "valid_mse")


def _label(metric: str) -> str:
  kind = "co-smoothing (held-out neurons)" if metric.startswith("cosmooth") else "held-out time"
  unit = {"mse": "MSE", "bps": "bits/spike", "r2": "R2"}[metric.split("_")[-1]]
  return f"{kind} {unit}"


def plot_sweep(results: dict[str, Any]):
  """Per layer: held-out metric vs latent size for LSTM (mean +- SE over seeds), PCA and FA.

  The chosen dimension is a solid line, the true one (synthetic data) dashed.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  metric = _metric(results)
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
    for method, style in (("pca", "s--"), ("fa", "^--")):
      key = f"{method}_{metric}"
      pts = [(k, base[layer][k][key]) for k in sorted(base[layer]) if base[layer][k].get(key) is not None]
      if pts:
        ax.plot(*zip(*pts), style, alpha=0.8, label=method.upper())
    chosen = results.get("optimal_latent", {}).get(layer)
    if chosen is not None:
      ax.axvline(chosen, color="k", lw=1.2, label=f"chosen {chosen}")
    if layer in true_latent:
      ax.axvline(true_latent[layer], color="tab:green", ls=":", lw=2, label=f"true {true_latent[layer]}")
    ax.set_xscale("log")
    ax.set_xticks(results["latents"])
    ax.set_xticklabels([str(k) for k in results["latents"]], fontsize=8)
    ax.minorticks_off()
    ax.set_title(f"layer {layer}", fontsize=10)
    ax.set_xlabel("latent size")
    ax.set_ylabel(_label(metric), fontsize=8)
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(layers):]:
    ax.axis("off")
  fig.suptitle(f"{results['dataset']}: {results['decoder']} decoder, {results['likelihood']} "
               f"likelihood, {results['steps']} steps, {len(results['seeds'])} seed(s)", fontsize=10)
  fig.tight_layout()
  return fig


def plot_decoding(results: dict[str, Any]):
  """Held-out layer-decoding accuracy vs latent size (mean, min-max over seeds), with chance."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  acc = results["layer_accuracy"]
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  ks, vals = acc["latents"], [np.asarray(v) for v in acc["accuracy"]]
  mean = [v.mean() for v in vals]
  ax.errorbar(ks, mean, yerr=[[m - v.min() for m, v in zip(mean, vals)],
                              [v.max() - m for m, v in zip(mean, vals)]], fmt="o-", capsize=3,
              label="shared LSTM AE + logistic regression")
  ax.axhline(acc["chance"], color="gray", ls="--", label=f"chance ({acc['chance']:.2f})")
  ax.set_xscale("log")
  ax.set_xticks(ks)
  ax.set_xticklabels([str(k) for k in ks])
  ax.minorticks_off()
  ax.set_ylim(0, 1.02)
  ax.set_xlabel("latent size")
  ax.set_ylabel("held-out layer accuracy")
  ax.set_title(f"{results['dataset']}: which layer is this window from?", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return fig


def save_figure(path: str, fig) -> None:
  import matplotlib.pyplot as plt

  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=120)
  plt.close(fig)
  atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")


def table(results: dict[str, Any], field: str | None = None) -> str:
  """A text table: rows are layers, columns latent sizes, cells mean over seeds."""
  field = field or _metric(results)
  by_layer = curves(results, field)
  latents = results["latents"]
  head = f"{'layer':>8} " + " ".join(f"{'k=' + str(k):>10}" for k in latents)
  extra = [("chosen", "optimal_latent"), ("knee", "knee_latent"), ("1-SE", "one_se_latent"),
           ("true", "true_latent")]
  extra = [(h, k) for h, k in extra if results.get(k)]
  head += "".join(f" {h:>6}" for h, _ in extra)
  lines = [f"held-out {field} (mean over seeds)", head]
  for layer in results["layers"]:
    cells = [by_layer[layer][k] for k in latents]
    row = f"{layer:>8} " + " ".join(f"{np.mean(c):>10.4g}" if c else f"{'diverged':>10}" for c in cells)
    row += "".join(f" {str(results[k][layer]):>6}" for _, k in extra)
    lines.append(row)
  return "\n".join(lines)


def write_all(workdir: str, results: dict[str, Any], flags_text: str = "") -> list[str]:
  """Writes results.json, results.csv, sweep.png and report.md; returns their paths."""
  paths = [os.path.join(workdir, n) for n in ("results.json", "results.csv", "sweep.png", "report.md")]
  write_json(paths[0], results)
  write_csv(paths[1], results)
  save_figure(paths[2], plot_sweep(results))
  atomic_write(paths[3], lambda f: f.write(markdown_report(results, flags_text)))
  if results.get("layer_accuracy"):
    paths.append(os.path.join(workdir, "decoding.png"))
    save_figure(paths[-1], plot_decoding(results))
  return paths


def markdown_report(results: dict[str, Any], flags_text: str = "") -> str:
  """A one-page summary for a lab notebook: data, flags, table, chosen dimension and how."""
  metric = _metric(results)
  dim = results.get("dimension", {})
  data = results.get("data", {})
  lines = [f"# nmas-jax sweep: {results['dataset']}", ""]
  lines += ["## Data", "",
            f"- dataset: `{results['dataset']}`" + (f" ({data['path']})" if data.get("path") else ""),
            f"- {len(results['layers'])} layers ({', '.join(results['layers'])}), "
            f"{data.get('num_neurons')} neurons each, {data.get('num_time')} time bins",
            f"- split: first {results['config']['train_fraction']:.0%} of time for training, the rest held out; "
            f"{results.get('heldout_neurons', 0):.0%} of each layer's neurons held out from the encoder",
            f"- model: LSTM encoder ({results['config']['hidden']} units) -> latent -> {results['decoder']} "
            f"decoder, {results['likelihood']} likelihood, {results['steps']} steps, "
            f"seeds {results['seeds']}", ""]
  if results.get("true_latent"):
    lines += [f"- true dimension per layer (synthetic): {results['true_latent']}", ""]
  lines += ["## Held-out results", "", f"Metric: **{metric}** ({_label(metric)}), mean over seeds.", ""]
  by_layer = curves(results, metric)
  base = defaultdict(dict)
  for r in results.get("baselines", []):
    base[r["layer"]][r["latent"]] = r
  lines += ["| layer | latent | LSTM mean | LSTM SE | PCA | FA |", "|---|---|---|---|---|---|"]
  for layer in results["layers"]:
    for k in sorted(results["latents"]):
      v = np.asarray(by_layer[layer][k])
      se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
      b = base[layer].get(k, {})
      fmt = lambda x: "-" if x is None or not np.isfinite(x) else f"{x:.4g}"
      lines.append(f"| {layer} | {k} | {fmt(v.mean() if len(v) else None)} | {fmt(se)} | "
                   f"{fmt(b.get(f'pca_{metric}'))} | {fmt(b.get(f'fa_{metric}'))} |")
  lines += ["", "## Chosen dimension", ""]
  if results.get("optimal_latent"):
    lines += ["| layer | chosen | knee | one-SE | participation ratio | PCs for 90% var |" +
              (" true |" if results.get("true_latent") else ""),
              "|---|---|---|---|---|---|" + ("---|" if results.get("true_latent") else "")]
    for layer in results["layers"]:
      row = (f"| {layer} | **{results['optimal_latent'][layer]}** | {results['knee_latent'][layer]} | "
             f"{results['one_se_latent'][layer]} | {results['participation_ratio'][layer]} | "
             f"{results['pca_dims_90'][layer]} |")
      if results.get("true_latent"):
        row += f" {results['true_latent'][layer]} |"
      lines.append(row)
    lines += ["", f"How: {dim.get('rule', '')}. The knee is the point of the gain curve farthest above "
              "its chord on a log-latent axis; one-SE is the smallest latent within one standard error "
              "(over seeds) of the best. Where they disagree, read the curve in sweep.png.", ""]
    if results.get("shuffle_control"):
      sc = results["shuffle_control"]
      lines += ["## Shuffle control", "",
                "Each neuron circularly shifted in time by its own random offset: its own statistics "
                "stay, structure shared between neurons is destroyed. Held-out gain in "
                f"{sc['metric']} from the smallest to the best latent:", "",
                "| layer | real data | shuffled control |", "|---|---|---|"]
      for layer, g in sc["layers"].items():
        lines.append(f"| {layer} | {g['gain']:.4g} | {g['control_gain']:.4g} |")
      lines += ["", "A real gain far above the control's says the latent structure is shared, "
                "not an artefact of single-neuron statistics.", ""]
    if results.get("layer_accuracy"):
      acc = results["layer_accuracy"]
      lines += ["## Layer decoding", "",
                f"Held-out accuracy of a linear classifier predicting the layer from the latent trajectory "
                f"(chance {acc['chance']:.2f}):", "",
                "| latent | accuracy mean | min | max |", "|---|---|---|---|"]
      for k, v in zip(acc["latents"], acc["accuracy"]):
        lines.append(f"| {k} | {np.mean(v):.3f} | {np.min(v):.3f} | {np.max(v):.3f} |")
      lines.append("")
  lines += ["## Files", "", "results.json, results.csv, sweep.png, report.md" +
            (", decoding.png" if results.get("layer_accuracy") else "") + ", tb/, metrics.jsonl, flags.txt", ""]
  if flags_text:
    lines += ["## Flags", "", "```", flags_text.strip(), "```", ""]
  return "\n".join(lines)
