"""Layer decoding: how many latent dimensions does it take to tell layers apart?

One autoencoder per (latent, seed) is trained on windows of all layers
together (`run_sweep(..., shared=True)`). Each window's latent trajectory is
summarised by its mean and standard deviation over time, and a multinomial
logistic regression (JAX + optax, one per model, vmapped) learns the layer
from training-block windows and is scored on held-out windows.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nmas_jax import models
from nmas_jax.config import Settings
from nmas_jax.data import batches, splits
from nmas_jax.training import train


def window_features(z_VWK: jax.Array) -> jax.Array:
  """[windows, 2K]: mean and standard deviation of the latent trajectory over time."""
  return jnp.concatenate([z_VWK.mean(axis=1), z_VWK.std(axis=1)], axis=-1)


def fit_logistic(
  f_train_NF: jax.Array,
  y_train_N: jax.Array,
  num_classes: int,
  *,
  steps: int = 500,
  learning_rate: float = 0.05,
  l2: float = 1e-3,
):
  """Multinomial logistic regression by Adam on standardised features; returns predict(f)."""
  mu, sd = f_train_NF.mean(axis=0), f_train_NF.std(axis=0) + 1e-6
  norm = lambda f: (f - mu[None, :]) / sd[None, :]
  x = norm(f_train_NF)
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adam(learning_rate)

  def loss(p):
    logits = x @ p["w"] + p["b"][None, :]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y_train_N).mean() + l2 * jnp.sum(
      p["w"] ** 2
    )

  def step(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
  return lambda f: jnp.argmax(norm(f) @ params["w"] + params["b"][None, :], axis=-1)


def layer_accuracy(prep: splits.Prepared, cfg: Settings, out) -> dict[str, Any]:
  """Held-out layer-classification accuracy per (latent, seed) of a shared-model
  `sweep.SweepOutput`."""
  dataset = prep.dataset
  num_layers = dataset.num_layers
  tr = batches.windows(dataset.x_LTN, *prep.block("train"), prep.window)  # [L, Vt, W, N]
  va = batches.windows(dataset.x_LTN, *prep.block("valid"), prep.window)  # [L, Vv, W, N]
  x_tr = jnp.asarray(tr.reshape(-1, *tr.shape[2:]))
  x_va = jnp.asarray(va.reshape(-1, *va.shape[2:]))
  y_tr = jnp.repeat(jnp.arange(num_layers), tr.shape[1])
  y_va = jnp.repeat(jnp.arange(num_layers), va.shape[1])
  model = models.make_model(cfg, dataset.num_neurons)

  @jax.jit
  @jax.vmap
  def accuracy(params, latent):
    latents = functools.partial(train.predict, params, latent, model=model)
    f_tr, f_va = window_features(latents(x_tr)[1]), window_features(latents(x_va)[1])
    predict = fit_logistic(f_tr, y_tr, num_layers)
    return jnp.mean(predict(f_va) == y_va)

  acc = np.asarray(accuracy(out.state.params, out.state.latent))
  first = out.table.of_decoder(0)  # a sweep of several decoders: the first listed one's
  by_latent = [
    [float(acc[i]) for i in np.flatnonzero((out.table.latent == k) & first)] for k in cfg.latents
  ]
  return {
    "latents": list(map(int, cfg.latents)),
    "accuracy": by_latent,
    "chance": 1.0 / num_layers,
    "features": "mean and std over time of each window's z",
    "classifier": "multinomial logistic regression on training-block windows, "
    "scored on held-out windows",
  }
