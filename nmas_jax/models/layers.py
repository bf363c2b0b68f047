"""Building blocks shared by the families: the latent mask, per-unit initialisation and `Dense`.

Shapes: B batch, T time, N neurons, H hidden units, K latent width (padded).

A model of latent size k runs padded to width K >= k: latent units >= k are multiplied by zero,
so outputs, loss and gradients equal those of an unpadded model of width k with the same
weights, and padded weights get zero gradient. This is what lets models of different latent
sizes share one vmapped step.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def latent_mask(width: int, latent_size: Any) -> jax.Array:
  """[width] float mask, 1 for units < latent_size (a Python int or traced scalar)."""
  return (jnp.arange(width) < latent_size).astype(jnp.float32)


# The decoder's kernel that reads z, by decoder kind (within "decoder_net"). In this order, the


def per_unit_init(axis: int, bands: int = 1):
  """A kernel initializer that draws each latent unit's slice along `axis` from its own key.

  Why: a sweep initialises every model at the padded width K, the grid's largest latent. A
  plain initializer draws a [H, K] kernel as one array, so unit j's weights change with K and
  adding a latent to the grid would re-initialise every model. Here unit j of band b is drawn
  from fold_in(fold_in(key, b), j) whatever K is. A latent on the output axis (axis -1) gets
  lecun scale over the input axes (truncated normal, variance 1 / fan_in); a latent on the input
  axis (axis 0) is drawn at unit variance, and `scale_latent_inputs` then divides it by sqrt(k),
  the lecun scale of an unpadded model of k latents.
  """

  def init(key, shape, dtype=jnp.float32):
    width = shape[axis] // bands
    other = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    fan_in = 1 if axis % len(shape) == 0 else int(np.prod(shape[:-1]))
    std = (1.0 / fan_in) ** 0.5 / 0.87962566103423978  # flax's lecun_normal correction

    def unit(b, j):
      k = jax.random.fold_in(jax.random.fold_in(key, b), j)
      return jax.random.truncated_normal(k, -2.0, 2.0, other, jnp.float32) * std

    units = jax.vmap(lambda b: jax.vmap(lambda j: unit(b, j))(jnp.arange(width)))(
      jnp.arange(bands)
    ).reshape((bands * width,) + other)
    return jnp.moveaxis(units, 0, axis).astype(dtype)

  return init


def scale_latent_inputs(model: nn.Module, params: Any, latent: Any) -> Any:
  """`params` with the kernels that read the latent divided by sqrt(k) (k = `latent`, summed
  over bands): completes `per_unit_init`, so a padded model of latent size k starts as an
  unpadded width-k model drawn from the same key would (lecun scale, fan_in k)."""
  k = jnp.maximum(jnp.asarray(model.latent_total(latent), jnp.float32), 1.0)
  for path in model.latent_inputs():
    params = update_at(
      params, (*path, "kernel"), lambda kernel: kernel / jnp.sqrt(k).astype(kernel.dtype)
    )
  return params


def update_at(tree: Any, path: tuple[str, ...], fn) -> Any:
  """`tree` (nested dicts, e.g. params) with tree[path...] replaced by fn of it (new dicts along
  the path, the rest shared)."""
  if not path:
    return fn(tree)
  return {**tree, path[0]: update_at(tree[path[0]], path[1:], fn)}


@jax.custom_vjp
def _matmul(x_RD: jax.Array, kernel_DF: jax.Array) -> jax.Array:
  """x [rows, D] @ kernel [D, F], differentiated as (g @ kernel^T, x^T @ g) (see `Dense`)."""
  return jnp.dot(x_RD, kernel_DF)


def _matmul_fwd(x_RD, kernel_DF):
  return jnp.dot(x_RD, kernel_DF), (x_RD, kernel_DF)


def _matmul_bwd(res, g_RF):
  x_RD, kernel_DF = res
  return jnp.dot(g_RF, kernel_DF.T), jnp.dot(x_RD.T, g_RF)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """`nn.Dense` (same parameters, names, initialisation and forward) with the kernel
  gradient written as x^T @ g.

  Why: autodiff of `nn.Dense` asks XLA for g^T x, and XLA:CPU then copies the
  output gradient g ([rows, features], as large as a readout's output) into a
  transposed layout before every weight-gradient matmul; x^T @ g needs no copy
  of g (and only a small one of x when x is the narrower side).
  """

  features: int
  use_bias: bool = True
  dtype: Any = None
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
    bias = (
      self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = _matmul(x.reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], self.features)
    return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def rate_on(rate: Any) -> bool:
  """Whether a dropout rate is in use: a number above 0, or a traced value (a population's
  member's own rate, `train.TrainState.hparams`)."""
  return not isinstance(rate, (int, float)) or rate > 0


class Dropout(nn.Module):
  """`nn.Dropout` (same random draws: `bernoulli(key, 1 - rate)` on the "dropout" stream) whose
  rate may be a traced scalar, so each member of a population trains with its own."""

  rate: Any
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    if nn.merge_param("deterministic", self.deterministic, deterministic):
      return x
    if not rate_on(self.rate):
      return x
    keep = 1.0 - self.rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, x.shape)
    return jax.lax.select(mask, x / keep, jnp.zeros_like(x))
