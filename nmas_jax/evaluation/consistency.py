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
  """R^2 on the validation block of the least-squares map [1, z_a] -> z_b fitted on training."""
  design = lambda z: np.c_[np.ones(len(z)), z]
  coef, *_ = np.linalg.lstsq(design(za_train), zb_train, rcond=None)
  resid = zb_valid - design(za_valid) @ coef
  total = ((zb_valid - zb_valid.mean(axis=0)) ** 2).sum()
  return float(1.0 - (resid**2).sum() / total) if total > 0 else float("nan")


def for_sweep(state, table, index: np.ndarray, prep, cfg, predictions) -> dict[str, Any]:
  """`seed_consistency` of the models at `index` (a sweep's first decoder's models of every
  held-in neuron; `table` is theirs), from `predictions` (`evaluate.model_predictions`)."""
  sub_state = jax.tree.map(lambda a: a[index], state)
  z = {b: predictions(sub_state, table, prep, cfg, b, latents=True) for b in ("train", "valid")}
  return seed_consistency(
    z["train"], z["valid"], table.layer, table.latent, prep.dataset.layer_names, cfg.latents
  )


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
