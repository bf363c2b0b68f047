"""The human-readable summary of a sweep: the printed table, report.md, and every output file at once."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np

from nmas_jax import files, plots, results as results_lib
from nmas_jax.plots import metric_label
from nmas_jax.results import curves, dimension_metric


def table(results: dict[str, Any], field: str | None = None) -> str:
  """A text table: rows are layers, columns latent sizes, cells mean over seeds."""
  field = field or dimension_metric(results)
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
  files.write_json(paths[0], results)
  results_lib.write_csv(paths[1], results)
  plots.save_figure(paths[2], plots.plot_sweep(results))
  files.write_text(paths[3], markdown_report(results, flags_text))
  if results.get("layer_accuracy"):
    paths.append(os.path.join(workdir, "decoding.png"))
    plots.save_figure(paths[-1], plots.plot_decoding(results))
  return paths


def markdown_report(results: dict[str, Any], flags_text: str = "") -> str:
  """A one-page summary for a lab notebook: data, flags, table, chosen dimension and how."""
  metric = dimension_metric(results)
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
  lines += ["## Held-out results", "", f"Metric: **{metric}** ({metric_label(metric)}), mean over seeds.", ""]
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
