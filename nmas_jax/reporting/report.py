"""The human-readable summary of a sweep: the printed table, report.md, and every output file at
once."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np

from nmas_jax import files, models
from nmas_jax.reporting import context, pbt, plots
from nmas_jax.reporting import results as results_lib
from nmas_jax.reporting.plots import metric_label
from nmas_jax.reporting.results import curves, dimension_metric
from nmas_jax.reporting.tables import (
  answer_lines,
  bands_table,
  fmt,
  interval,
  scaling_methods,
  unconverged_advice,
  verdict,
)


def _bands_section(results: dict[str, Any]) -> list[str]:
  if not results.get("optimal_latent_bands"):
    return []
  dim = results["dimension"]
  return [
    "## Latents per timescale (validation block)",
    "",
    "```",
    bands_table(results),
    "```",
    "",
    f"How: {dim['rule']}. Each band's count is shown with its 5th-95th percentile "
    "interval over the bootstrap; timescales.png shows the gain over the whole grid.",
    "",
  ]


def write_all(workdir: str, results: dict[str, Any], flags_text: str = "") -> list[str]:
  """Writes results.json, results.csv, sweep.png, spectrum.png and report.md; returns their
  paths."""
  bands = bool(results.get("optimal_latent_bands"))  # multiscale: timescales.png, no sweep.png
  paths = [os.path.join(workdir, n) for n in ("results.json", "results.csv", "report.md")]
  files.write_json(paths[0], results)
  results_lib.write_csv(paths[1], results)
  if not bands:
    paths.append(os.path.join(workdir, "sweep.png"))
    plots.save_figure(paths[-1], plots.plot_sweep(results))
  if results.get("spectrum"):
    paths.append(os.path.join(workdir, "spectrum.png"))
    plots.save_figure(paths[-1], plots.plot_spectrum(results))
  files.write_text(paths[2], markdown_report(results, flags_text))
  if results.get("scaling"):
    paths.append(os.path.join(workdir, "scaling.png"))
    plots.save_figure(paths[-1], plots.plot_scaling(results))
  if results.get("layer_accuracy"):
    paths.append(os.path.join(workdir, "decoding.png"))
    plots.save_figure(paths[-1], plots.plot_decoding(results))
  if bands:
    paths.append(os.path.join(workdir, "timescales.png"))
    plots.save_figure(paths[-1], plots.plot_timescales(results))
  if results.get("population"):
    paths.append(os.path.join(workdir, "pbt.png"))
    plots.save_figure(paths[-1], pbt.plot(results))
  return paths


def _data_section(results: dict[str, Any]) -> list[str]:
  data, cfg, blocks = results.get("data", {}), results["config"], results.get("blocks", {})
  lines = [
    "## Data",
    "",
    f"- dataset: `{results['dataset']}`" + (f" ({data['path']})" if data.get("path") else ""),
    f"- {len(results['layers'])} layers ({', '.join(results['layers'])}), "
    f"{data.get('num_neurons')} neurons each, {data.get('num_time')} time bins",
  ]
  if blocks:
    b = blocks
    lines.append(
      f"- time blocks: train {b['train'][0]}-{b['train'][1]} (fits the models and the "
      f"normalisation), validation {b['valid'][0]}-{b['valid'][1]} (chooses each model's "
      f"best step and the latent size), test {b['test'][0]}-{b['test'][1]} (reported only); "
      f"windows of {b['window']} bins"
      + (
        f"; trial data, split by whole trials of {b['trial_length']} bins"
        if b.get("trial_length")
        else ""
      )
    )
  folds = results.get("neuron_folds") or 0
  held = (
    f"- each layer's neurons split at random into {folds} disjoint folds per seed, each fold "
    f"held out from the encoder by its own model (held-out set s * {folds} + f: seed s, fold f)"
    if folds
    else f"- {results.get('heldout_neurons', 0):.0%} of each layer's neurons held out "
    "from the encoder, a different random set per seed"
  )
  lines += [
    held,
    _model_line(results, cfg) + f", {results['likelihood']} likelihood, normalisation "
    f"{', '.join(sorted(set((results.get('normalize') or {}).values()))) or 'none'}, "
    f"{results['steps']} steps, {'held-out sets' if folds else 'seeds'} {results['seeds']}",
  ]
  lines += [f"- note: {n}" for n in results.get("notes", [])]
  if results.get("true_latent"):
    lines.append(f"- true dimension per layer (synthetic): {results['true_latent']}")
  return lines + [""]


def _model_line(results: dict[str, Any], cfg: dict[str, Any]) -> str:
  return models.family(results.get("model", "autoencoder")).describe(cfg)


def _curves_section(results: dict[str, Any], metric: str) -> list[str]:
  lines = [
    "## Held-out results (validation block)",
    "",
    f"Metric: **{metric}** ({metric_label(metric)}), mean over seeds.",
    "",
  ]
  methods = results_lib.baseline_methods(results)
  lines += [
    "| layer | latent | model mean | model SE |" + "".join(f" {m.upper()} |" for m in methods),
    "|---|---|---|---|" + "---|" * len(methods),
  ]
  by_layer = curves(results, metric)
  base = defaultdict(dict)
  for r in results.get("baselines", []):
    base[r["layer"]][r["latent"]] = r
  for layer in results["layers"]:
    for k in sorted(results["latents"]):
      v = np.asarray(by_layer[layer][k])
      se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
      b = base[layer].get(k, {})
      lines.append(
        f"| {layer} | {k} | {fmt(v.mean() if len(v) else None)} | {fmt(se)} |"
        + "".join(f" {fmt(b.get(f'{m}_{metric}'))} |" for m in methods)
      )
  return lines + [""]


def _choice_section(results: dict[str, Any]) -> list[str]:
  dim, true = results.get("dimension", {}), results.get("true_latent") or {}
  if not any(v is not None for v in results.get("optimal_latent", {}).values()):
    return ["## Chosen dimension", "", f"None: {dim.get('rule', 'no estimate')}.", ""]
  base = results.get("baseline_optimal_latent") or {}
  methods = [m for m in results_lib.baseline_methods(results) if m in base]
  lines = [
    "## Chosen dimension (validation block)",
    "",
    "| layer | chosen | 5-95% interval | knee | one-SE | detectable |"
    + "".join(f" {m.upper()} (same rule) |" for m in methods)
    + " participation ratio | PCs for 90% var |"
    + (" true |" if true else ""),
    "|---|---|---|---|---|---|" + "---|" * len(methods) + "---|---|" + ("---|" if true else ""),
  ]
  for layer in results["layers"]:
    row = (
      f"| {layer} | **{results['optimal_latent'][layer]}** | {interval(results, layer)} | "
      f"{results['knee_latent'][layer]} | {results['one_se_latent'][layer]} | "
      f"{(results.get('detectable_latent') or {}).get(layer, '-')} |"
      + "".join(f" {base[m].get(layer, '-')} |" for m in methods)
      + f" {results['participation_ratio'][layer]} | {results['pca_dims_90'][layer]} |"
    )
    lines.append(row + (f" {true.get(layer, '-')} |" if true else ""))
  boot = dim.get("bootstrap", {})
  lines += [
    "",
    f"How: {dim.get('rule', '')}; the gain is the {dim.get('gain', '')}. The interval is "
    f"the 5th-95th percentile of the choice over {boot.get('resamples')} bootstrap resamples "
    f"of {boot.get('over', '')} (seed {boot.get('seed')}). The knee is the point of the gain "
    "curve farthest above its chord on a log-latent axis; one-SE the smallest latent within "
    "one standard error (over seeds) of the best; detectable the smallest latent that no "
    "larger one beats in 95% of the same resamples (every dimension the held-out data can "
    "detect, however small its share of the gain). Each baseline is chosen by the same rule on "
    "its own co-smoothing curve. Where they disagree, read the curve in sweep.png.",
    "",
  ]
  return lines


def _scaling_section(results: dict[str, Any]) -> list[str]:
  sc = results.get("scaling")
  if not sc:
    return []
  methods = scaling_methods(results)
  lines = [
    "## Dimension against neuron count (validation block)",
    "",
    "The sweep repeated with each layer's encoder seeing nested random subsets of its held-in "
    "neurons (the held-out neurons, the targets, stay the same). Chosen latent per count, "
    "with the bootstrap interval; scaling.png plots it.",
    "",
    "| layer | "
    + " | ".join(f"{c} neurons" for c in sc["counts"])
    + " | slope | verdict |"
    + "".join(f" {m.upper()} |" for m in methods),
    "|---|" + "---|" * (len(sc["counts"]) + 2 + len(methods)),
  ]
  for layer, row in sc["layers"].items():
    cells = [f"{k} ({iv[0]}-{iv[1]})" for k, iv in zip(row["chosen"], row["interval"])]
    lines.append(
      f"| {layer} | "
      + " | ".join(cells)
      + f" | {row['slope'] if row['slope'] is not None else '-'} | "
      f"{verdict(row)} |" + "".join(f" {','.join(map(str, row[m]))} |" for m in methods)
    )
  lines += ["", f"Saturates: {sc['saturates_when']}. Slope: {sc['slope']}.", ""]
  return lines


def _test_section(results: dict[str, Any]) -> list[str]:
  """Per layer, one sentence: the model against each baseline at the chosen size, on the test
  block."""
  comp = results.get("test_comparison") or {}
  if not comp:
    return []
  lines = ["## Against the baselines at the chosen size (test block)", ""]
  for layer, c in comp.items():
    if c.get("model") is None:
      continue
    better = lambda other: (c["model"] > other) if c["higher_is_better"] else (c["model"] < other)
    parts = []
    for m in results_lib.baseline_methods(results):
      if c.get(m) is None:
        continue
      rel = abs(c["model"] - c[m]) / max(abs(c[m]), 1e-12)
      parts.append(
        f"{'beats' if better(c[m]) else 'loses to'} {m.upper()} by {rel:.1%} "
        f"({fmt(c['model'])} vs {fmt(c[m])})"
      )
    rates = (
      f" Inferred rates against the true ones: R2 {fmt(c['test_rates_r2'])}."
      if c.get("test_rates_r2") is not None
      else ""
    )
    what = " and ".join(parts) if parts else f"scores {fmt(c['model'])} (no baseline at this size)"
    bands = f" (bands {'/'.join(map(str, c['bands']))})" if c.get("bands") else ""
    lines.append(
      f"- layer {layer}, latent {c['latent']}{bands}, {c['metric']}: the model "
      + what
      + "."
      + rates
    )
  return lines + [""]


def _range(values: list) -> str:
  values = [v for v in values if v is not None]
  return f"{min(values)}-{max(values)}" if values else "-"


def _training_section(results: dict[str, Any]) -> list[str]:
  models, cfg = results.get("models", []), results.get("config", {})
  late = [m for m in models if m.get("converged") is False]
  lines = [
    "## Training",
    "",
    "Each model is scored with its parameters from its best validation evaluation (`best_step`); "
    "it trained until its held-out score stopped moving (`converged`, at `stopped_at_step`: "
    f"--stop_tolerance={cfg.get('stop_tolerance')}, "
    f"--stop_patience={cfg.get('stop_patience')}) or until the --steps cap.",
  ]
  if late:
    lines += [unconverged_advice(results, code="`"), ""]
    lines += [
      f"- layer {m['layer']}, latent {m['latent']}, seed {m['seed']}"
      + (f", {m['decoder']} decoder" if m.get("decoder") else "")
      + f" (best step {m.get('best_step')})"
      for m in late[:20]
    ]
    if len(late) > 20:
      lines.append(f"- ... and {len(late) - 20} more (results.json)")
  else:
    lines.append(
      "Every model converged before the cap (steps "
      + _range([m.get("stopped_at_step") for m in models])
      + ")."
    )
  return lines + [""]


def _controls_section(results: dict[str, Any]) -> list[str]:
  lines = []
  if results.get("shuffle_control"):
    sc = results["shuffle_control"]
    lines += [
      "## Shuffle control",
      "",
      "Each neuron circularly shifted in time by its own random offset before "
      "normalisation: its own statistics stay, structure shared between neurons is "
      "destroyed. Best held-out gain over the zero-latent null (validation block) and the "
      "dimension chosen by the same rule:",
      "",
      "| layer | real gain | control gain | real chosen | control chosen |",
      "|---|---|---|---|---|",
    ]
    for layer, g in sc["layers"].items():
      lines.append(
        f"| {layer} | {fmt(g['gain'])} | {fmt(g['control_gain'])} | {g['chosen']} | "
        f"{g['control_chosen']} |"
      )
    lines += [
      "",
      "A real gain far above the control's (whose dimension should be 0) says the "
      "latent structure is shared, not an artefact of single-neuron statistics.",
      "",
    ]
  if results.get("layer_accuracy"):
    acc = results["layer_accuracy"]
    lines += [
      "## Layer decoding",
      "",
      f"Held-out accuracy of a linear classifier predicting the layer from the latent "
      f"trajectory (chance {acc['chance']:.2f}):",
      "",
      "| latent | accuracy mean | min | max |",
      "|---|---|---|---|",
    ]
    for k, v in zip(acc["latents"], acc["accuracy"]):
      lines.append(f"| {k} | {np.mean(v):.3f} | {np.min(v):.3f} | {np.max(v):.3f} |")
    lines.append("")
  return lines


def markdown_report(results: dict[str, Any], flags_text: str = "") -> str:
  """A one-page summary for a lab notebook: data, blocks, curves, chosen dimension and how."""
  metric = dimension_metric(results)
  lines = [f"# nmas-jax sweep: {results['dataset']}", ""]
  answer = answer_lines(results)
  if answer:
    lines += ["## The answer (validation block)", "", *[f"- {a}" for a in answer], ""]
  if results.get("optimal_latent_bands"):
    lines += _data_section(results) + _bands_section(results)
  else:
    lines += _data_section(results) + _curves_section(results, metric) + _choice_section(results)
  lines += _scaling_section(results) + context.context_section(results) + _test_section(results)
  lines += _training_section(results) + pbt.section(results)
  lines += _controls_section(results)
  lines += [
    "## Files",
    "",
    "results.json, results.csv, report.md"
    + ("" if results.get("optimal_latent_bands") else ", sweep.png")
    + (", spectrum.png" if results.get("spectrum") else "")
    + (", scaling.png" if results.get("scaling") else "")
    + (", decoding.png" if results.get("layer_accuracy") else "")
    + (", timescales.png" if results.get("optimal_latent_bands") else "")
    + (", pbt.png" if results.get("population") else "")
    + ", tb/, metrics.jsonl, flags.txt",
    "",
  ]
  if flags_text:
    lines += ["## Flags", "", "```", flags_text.strip(), "```", ""]
  return "\n".join(lines)
