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

import jax
import numpy as np


def pair_r2(za_train: np.ndarray, zb_train: np.ndarray, za_valid, zb_valid) -> float:
  """R^2 on the validation block of the least-squares map [1, z_a] -> z_b fitted on training
  (z_b summed over its columns: latents, or neurons for a readout)."""
  design = lambda z: np.c_[np.ones(len(z)), z]
  coef, *_ = np.linalg.lstsq(design(za_train), zb_train, rcond=None)
  resid = zb_valid - design(za_valid) @ coef
  total = ((zb_valid - zb_valid.mean(axis=0)) ** 2).sum()
  return float(1.0 - (resid**2).sum() / total) if total > 0 else float("nan")


def for_sweep(state, table, index: np.ndarray, prep, cfg, predictions) -> dict[str, Any]:
  """`seed_consistency` and `few_shot` of the models at `index` (a sweep's first decoder's
  models of every held-in neuron; `table` is theirs), from `predictions`
  (`evaluate.model_predictions`): {layer: {"latents", "r2", "few_shot_r2"}}."""
  sub_state = jax.tree.map(lambda a: a[index], state)
  z = {b: predictions(sub_state, table, prep, cfg, b, latents=True) for b in ("train", "valid")}
  names = prep.dataset.layer_names
  out = seed_consistency(z["train"], z["valid"], table.layer, table.latent, names, cfg.latents)
  x = {b: prep.flat(b) for b in ("train", "valid")}
  rng = np.random.default_rng(0)
  for l, name in enumerate(names):
    shots = []
    for k in cfg.latents:
      scores = [
        few_shot(
          z["train"][i, :, :k],
          x["train"][l][:, prep.heldout_SLN[table.seed[i], l]],
          z["valid"][i, :, :k],
          x["valid"][l][:, prep.heldout_SLN[table.seed[i], l]],
          prep.window,
          rng,
        )
        for i in np.flatnonzero((table.layer == l) & (table.latent == k))
      ]
      shots.append(round(float(np.nanmean(scores)), 3) if scores else None)
    out[name]["few_shot_r2"] = shots
  return out


# Windows of the training block a few-shot readout is fitted on, and how many random draws of
# them are averaged.
SHOTS, SHOT_DRAWS = 8, 5


def few_shot(z_train_TK, y_train_TH, z_valid_TK, y_valid_TH, window: int, rng) -> float:
  """Few-shot co-smoothing (Dabholkar & Barak 2025): R^2 on the validation block of a linear
  readout from the latents to the held-out neurons fitted on only `SHOTS` random training
  windows (mean over `SHOT_DRAWS` draws). Extra latents that carry no signal let the readout
  fit noise from few samples, so this score falls where full co-smoothing does not."""
  if y_train_TH.shape[1] == 0:
    return float("nan")
  starts = np.arange(0, len(z_train_TK) - window + 1, window)
  out = []
  for _ in range(SHOT_DRAWS):
    pick = rng.choice(starts, min(SHOTS, len(starts)), replace=False)
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
  """{layer name: {"latents": [k], "r2": [mean pair R^2 or None]}} over the models given (one
  per layer, latent and seed; each model's first k latent units)."""
  out = {}
  for l, name in enumerate(names):
    r2 = []
    for k in latents:
      idx = np.flatnonzero((layer_M == l) & (latent_M == k))
      pairs = [
        pair_r2(
          z_train_MTK[a, :, :k], z_train_MTK[b, :, :k], z_valid_MTK[a, :, :k], z_valid_MTK[b, :, :k]
        )
        for a in idx
        for b in idx
        if a != b
      ]
      r2.append(round(float(np.nanmean(pairs)), 3) if pairs else None)
    out[name] = {"latents": [int(k) for k in latents], "r2": r2}
  return out
