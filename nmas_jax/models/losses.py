"""Likelihoods and the reconstruction loss every family trains on; coordinated dropout."""

from __future__ import annotations

import jax
import jax.numpy as jnp

LIKELIHOODS = ("gaussian", "poisson")

# Largest log-rate the Poisson readout may emit (exp(15) ~ 3e6 spikes per bin): keeps exp finite.
MAX_LOG_RATE = 15.0


def mean_prediction(y_BTN: jax.Array, likelihood: str = "gaussian") -> jax.Array:
  """The model's predicted mean activity: y itself, or Poisson rates exp(y) (y the log-rate,
  clipped)."""
  if likelihood == "gaussian":
    return y_BTN
  if likelihood == "poisson":
    return jnp.exp(jnp.minimum(y_BTN, MAX_LOG_RATE))
  raise ValueError(f"unknown likelihood {likelihood!r}: choose one of {LIKELIHOODS}")


def elementwise_loss(y_BTN: jax.Array, x_BTN: jax.Array, likelihood: str = "gaussian") -> jax.Array:
  """Loss of each element: squared error, or Poisson NLL (without log x!) of rates exp(y)."""
  if likelihood == "gaussian":
    return (y_BTN - x_BTN) ** 2
  log_rate_BTN = jnp.minimum(y_BTN, MAX_LOG_RATE)
  return jnp.exp(log_rate_BTN) - x_BTN * log_rate_BTN


def reconstruction_loss(
  y_BTN: jax.Array, x_BTN: jax.Array, likelihood: str = "gaussian"
) -> jax.Array:
  """Mean loss per element (`elementwise_loss`)."""
  return jnp.mean(elementwise_loss(y_BTN, x_BTN, likelihood))


def weighted_loss(
  y_BTN: jax.Array, x_BTN: jax.Array, w_BTN: jax.Array, likelihood: str
) -> jax.Array:
  """The mean elementwise loss over the elements with weight (coordinated dropout, loss masks)."""
  total = jnp.sum(elementwise_loss(y_BTN, x_BTN, likelihood) * w_BTN)
  return total / jnp.maximum(jnp.sum(w_BTN), 1.0)


def neuron_weighted_loss(
  y_BTN: jax.Array, x_BTN: jax.Array, w_N: jax.Array, likelihood: str
) -> jax.Array:
  """The mean elementwise loss over the neurons with weight w_N [N] (a --neuron_counts subset)."""
  per_n = elementwise_loss(y_BTN, x_BTN, likelihood) * w_N[None, None, :]
  return jnp.sum(per_n) / (jnp.sum(w_N) * x_BTN.shape[0] * x_BTN.shape[1])


def coordinated_dropout(
  key: jax.Array, x_BTN: jax.Array, rate: float
) -> tuple[jax.Array, jax.Array]:
  """(input, loss mask): each element is kept with probability 1 - rate (and scaled by
  1 / (1 - rate)) in the input; the loss mask is 1 exactly where the input dropped it, so the
  model cannot learn to copy an element to its own output (Keshtkaran & Pandarinath 2019)."""
  keep = jax.random.bernoulli(key, 1.0 - rate, x_BTN.shape)
  return jnp.where(keep, x_BTN / (1.0 - rate), 0.0), (~keep).astype(x_BTN.dtype)
