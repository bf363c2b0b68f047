"""Are the latents real? Their reproducibility across seeds and held-out neuron sets.

Two models of one layer and latent size, trained from different seeds on different held-out
neuron sets, should find the same latent trajectory up to a linear map if every latent carries
signal. Latents beyond the signal's dimension are free to differ (co-smoothing does not
penalise them: Dabholkar & Barak 2025), so the consistency of their trajectories falls. The
score for an ordered pair (a, b) is the R^2 of a linear map z_a -> z_b fitted on the training
block and scored on the validation block (variance-weighted over b's latents), as CEBRA's
consistency score does for embeddings; each (layer, latent) reports the mean over pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nmas_jax.training import sharding


def pair_r2(za_train: np.ndarray, zb_train: np.ndarray, za_valid, zb_valid) -> float:
  """R^2 on the validation block of the least-squares map [1, z_a] -> z_b fitted on training
  (z_b summed over its columns: latents, or neurons for a readout)."""
  design = lambda z: np.c_[np.ones(len(z)), z]
  coef, *_ = np.linalg.lstsq(design(za_train), zb_train, rcond=None)
  resid = zb_valid - design(za_valid) @ coef
  total = ((zb_valid - zb_valid.mean(axis=0)) ** 2).sum()
  return float(1.0 - (resid**2).sum() / total) if total > 0 else float("nan")


def for_sweep(
  state, table, index: np.ndarray, prep, cfg, predictions
) -> tuple[dict[str, Any], dict[int, dict[str, float | None]]]:
  """`seed_consistency` and `few_shot` of the models at `index` (a sweep's first decoder's
  models of every held-in neuron; `table` is theirs), from `predictions`
  (`evaluate.model_predictions`): ({layer: {"latents", "r2", "few_shot_r2"}} (means per latent),
  {position in `index`: {"seed_consistency_r2", "few_shot_r2"}} (per model))."""
  sub_state = sharding.take(state, index)
  z = {b: predictions(sub_state, table, prep, cfg, b, latents=True) for b in ("train", "valid")}
  names = prep.dataset.layer_names
  out, per_model = seed_consistency(
    z["train"], z["valid"], table.layer, table.latent, names, cfg.latents
  )
  x = {b: prep.flat(b) for b in ("train", "valid")}
  rng = np.random.default_rng(0)
  shots_M = np.full(len(table), np.nan)
  for i in range(len(table) if cfg.few_shot_windows else 0):
    k, held = table.latent[i], prep.heldout_SLN[table.seed[i], table.layer[i]]
    shots_M[i] = few_shot(
      z["train"][i, :, :k],
      x["train"][table.layer[i]][:, held],
      z["valid"][i, :, :k],
      x["valid"][table.layer[i]][:, held],
      prep.window,
      rng,
      cfg.few_shot_windows,
    )
  for l, name in enumerate(names):
    at = lambda k: shots_M[(table.layer == l) & (table.latent == k)]
    out[name]["few_shot_r2"] = [_mean(at(k)) for k in cfg.latents]
  for i in per_model:
    per_model[i]["few_shot_r2"] = _mean(shots_M[i : i + 1])
  return out, per_model


def guarded(curve: dict[str, Any], chosen: int | None) -> int | None:
  """The few-shot guard: the latent at or below `chosen` with the best few-shot co-smoothing
  (the smaller on a tie). Below `chosen` when its extra latents lowered the few-shot score, the
  sign of latents that are not real; None without scores."""
  shots = dict(zip(curve.get("latents", []), curve.get("few_shot_r2") or []))
  ok = {k: v for k, v in shots.items() if v is not None and chosen is not None and k <= chosen}
  return max(sorted(ok), key=lambda k: ok[k]) if ok else None


def above_chosen(curve: dict[str, Any], chosen: int | None) -> str:
  """A sentence on the scores just above `chosen`: whether few-shot co-smoothing falls and seed
  consistency drops there, as they should past the true dimension ("" when nothing is above)."""
  ks = curve.get("latents", [])
  if chosen not in ks or ks.index(chosen) + 1 >= len(ks):
    return ""
  j = ks.index(chosen)
  parts = []
  for name, key in (("few-shot co-smoothing", "few_shot_r2"), ("seed consistency", "r2")):
    v = (curve.get(key) or [None] * len(ks))[j : j + 2]
    if None not in v:
      verb = "falls" if v[1] < v[0] else "does not fall"
      parts.append(f"{name} {verb} ({v[0]:.2f} at {chosen}, {v[1]:.2f} at {ks[j + 1]})")
  return f"above the chosen {chosen}, " + "; ".join(parts) if parts else ""


def _mean(a: np.ndarray) -> float | None:
  a = np.asarray(a, float)
  return round(float(np.nanmean(a)), 3) if np.isfinite(a).any() else None


# How many random draws of training windows a few-shot readout is averaged over.
SHOT_DRAWS = 5


def few_shot(
  z_train_TK, y_train_TH, z_valid_TK, y_valid_TH, window: int, rng, shots: int = 8
) -> float:
  """Few-shot co-smoothing (Dabholkar & Barak 2025): R^2 on the validation block of a linear
  readout from the latents to the held-out neurons fitted on only `shots` random training
  windows (mean over `SHOT_DRAWS` draws). Extra latents that carry no signal let the readout
  fit noise from few samples, so this score falls where full co-smoothing does not."""
  if y_train_TH.shape[1] == 0:
    return float("nan")
  starts = np.arange(0, len(z_train_TK) - window + 1, window)
  out = []
  for _ in range(SHOT_DRAWS):
    pick = rng.choice(starts, min(shots, len(starts)), replace=False)
    t = (pick[:, None] + np.arange(window)[None, :]).reshape(-1)
    out.append(pair_r2(z_train_TK[t], y_train_TH[t], z_valid_TK, y_valid_TH))
  return float(np.mean(out))


def seed_consistency(
  z_train_MTK: np.ndarray,
  z_valid_MTK: np.ndarray,
  layer_M: np.ndarray,
  latent_M: np.ndarray,
  names,
  latents,
) -> dict[str, Any]:
  """({layer name: {"latents": [k], "r2": [mean pair R^2 or None]}}, {model: {
  "seed_consistency_r2": the mean R^2 of the ordered pairs it is in}}) over the models given
  (one per layer, latent and seed; each model's first k latent units)."""
  out, per_model = {}, {}
  for l, name in enumerate(names):
    r2 = []
    for k in latents:
      idx = np.flatnonzero((layer_M == l) & (latent_M == k))
      pairs = {
        (a, b): pair_r2(
          z_train_MTK[a, :, :k], z_train_MTK[b, :, :k], z_valid_MTK[a, :, :k], z_valid_MTK[b, :, :k]
        )
        for a in idx
        for b in idx
        if a != b
      }
      r2.append(_mean(list(pairs.values())) if pairs else None)
      for i in idx:
        mine = [v for (a, b), v in pairs.items() if i in (a, b)]
        per_model[int(i)] = {"seed_consistency_r2": _mean(mine) if mine else None}
    out[name] = {"latents": [int(k) for k in latents], "r2": r2}
  return out, per_model
