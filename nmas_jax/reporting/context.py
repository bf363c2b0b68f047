"""report.md's section on each layer's dimensionality in context: the reliable-variance
spectrum, FA's shared dimension, the standard estimators and the latents' seed consistency."""

from __future__ import annotations

from typing import Any

from nmas_jax.evaluation import consistency
from nmas_jax.reporting.tables import fmt


def context_section(results: dict[str, Any]) -> list[str]:
  """The reliable-variance spectrum's exponent and FA's shared dimension, per layer."""
  spec, dsh = results.get("spectrum") or {}, results.get("fa_dshared") or {}
  if not spec:
    return []
  fit = next(iter(spec.values()))["fit_range"]
  lines = [
    "## Dimensionality in context (train block fit, validation + test measured)",
    "",
    "| layer | spectrum exponent alpha | 5-95% interval | FA d_shared | FA latent (best "
    "validation likelihood) |",
    "|---|---|---|---|---|",
  ]
  for layer in results["layers"]:
    s, d = spec.get(layer, {}), dsh.get(layer, {})
    iv = s.get("alpha_interval")
    lines.append(
      f"| {layer} | {fmt(s.get('alpha'))} | {'-' if not iv else f'{iv[0]}-{iv[1]}'} | "
      f"{d.get('dshared', '-')} | {d.get('latent', '-')} |"
    )
  lines += [
    "",
    f"alpha: the power law var_n ~ n^-alpha fitted to the reliable variance (SVCA: two "
    f"random halves of the neurons, components of their training-block cross-covariance, "
    f"covariance of the halves' projections on held-out time) over components "
    f"{fit[0]}-{fit[1]}; the interval is over a bootstrap of held-out time blocks. "
    "d_shared: dimensions of the best FA model's shared covariance holding 95% of it "
    "(Williamson et al. 2016). spectrum.png shows the spectra.",
    "",
  ]
  return lines + _comparators_table(results) + _consistency_lines(results)


def _comparators_table(results: dict[str, Any]) -> list[str]:
  """The standard estimators per layer (`evaluation.comparators`)."""
  comp = results.get("comparators") or {}
  if not comp:
    return []
  names = list(next(iter(comp.values())))
  lines = ["| layer | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for layer in results["layers"]:
    lines.append(f"| {layer} | " + " | ".join(fmt(comp[layer].get(n)) for n in names) + " |")
  return lines + [
    "",
    "Standard estimators on the training block: parallel analysis (Horn), PCA's Bayesian rank "
    "(Minka; isotropic noise), the participation ratio, reliable SVCA components (above zero "
    "in 95% of a time-block bootstrap), and two intrinsic-dimension estimators, TwoNN and the "
    "Levina-Bickel MLE (k=20), on the block projected on its parallel-analysis components to "
    "remove noise (docs/validation.md says how each does on data with known answers).",
    "",
  ]


def _consistency_lines(results: dict[str, Any]) -> list[str]:
  """Per layer, the latents' reproducibility across seeds at each latent size."""
  cons = results.get("consistency") or {}
  if not cons:
    return []
  lines = [
    "Seed consistency: R^2 of one seed's latent trajectory from another's by a linear map "
    "(fitted on training, scored on validation; seeds differ in held-out neurons too). Latents "
    "beyond the signal's dimension need not reproduce, so a drop past the chosen size says the "
    "extra latents are not real.",
    "",
  ]
  for layer, c in cons.items():
    pairs = ", ".join(f"{k}: {fmt(v)}" for k, v in zip(c["latents"], c["r2"]))
    shots = ", ".join(f"{k}: {fmt(v)}" for k, v in zip(c["latents"], c.get("few_shot_r2") or []))
    above = consistency.above_chosen(c, (results.get("optimal_latent") or {}).get(layer))
    guard = consistency.guarded(c, (results.get("optimal_latent") or {}).get(layer))
    lines.append(
      f"- layer {layer}: seed consistency {pairs}; few-shot co-smoothing {shots}"
      + (f"; {above}" if above else "")
      + (f"; the few-shot guard answers {guard}" if guard is not None else "")
    )
  return lines + [
    "",
    "Few-shot co-smoothing: R^2 on validation of a linear readout from the latents to the "
    f"held-out neurons fitted on {(results.get('config') or {}).get('few_shot_windows', 8)} "
    "training windows only "
    "(Dabholkar & Barak 2025; --few_shot_windows): latents that carry no signal let it fit "
    "noise, so it falls past the true dimension where full co-smoothing does not. The few-shot "
    "guard is the latent at or below the chosen one with the best few-shot score.",
    "",
  ]
