"""Flax linen LSTM autoencoder with a maskable latent width.

Shapes: B batch, T time, N neurons, H hidden units, K latent width (padded).

A model of latent size k runs padded to width K >= k: latent units >= k are
multiplied by zero, so outputs, loss and gradients equal those of an unpadded
model of width k with the same weights, and padded weights get zero gradient.
This is what lets models of different latent sizes share one vmapped step.

The modules are plain `flax.linen` modules and can be embedded in other models:

  enc = Encoder(hidden=128, latent=10)
  z_BTK = enc.apply(params, x_BTN)                  # full width
  z_BTK = enc.apply(params, x_BTN, latent_size=4)   # units >= 4 are zero
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

DECODERS = ("lstm", "linear")


def latent_mask(width: int, latent_size: Any) -> jax.Array:
  """[width] float mask, 1 for units < latent_size (a Python int or traced scalar)."""
  return (jnp.arange(width) < latent_size).astype(jnp.float32)


def _gate_bias_init(key, shape, dtype=jnp.float32):
  """Zero biases except forget gates at +1, so memory is kept early in training."""
  del key
  hidden = shape[-1] // 4
  return jnp.zeros(shape, dtype).at[hidden: 2 * hidden].set(1.0)


class _Recurrence(nn.Module):
  """One LSTM time step given precomputed input gates; scanned over time."""

  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, gx_BG):
    h_BH, c_BH = carry
    g_BG = gx_BG + nn.Dense(4 * self.hidden, use_bias=False, dtype=self.dtype,
                            name="hidden")(h_BH).astype(jnp.float32)
    i, f, g, o = jnp.split(g_BG, 4, axis=-1)
    c_BH = jax.nn.sigmoid(f) * c_BH + jax.nn.sigmoid(i) * jnp.tanh(g)
    h_BH = jax.nn.sigmoid(o) * jnp.tanh(c_BH)
    return (h_BH, c_BH), h_BH


class ScanLSTM(nn.Module):
  """LSTM over time: x [B, T, D] -> h [B, T, H].

  The input projection x -> 4H gates is one matmul over all time steps, hoisted
  out of the recurrence; only h -> 4H runs inside `nn.scan`, time-major.
  `dtype` is the matmul dtype (e.g. bfloat16); cell state stays float32.
  """

  hidden: int
  reverse: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    gx_BTG = nn.Dense(4 * self.hidden, dtype=self.dtype, bias_init=_gate_bias_init,
                      name="input")(x_BTD).astype(jnp.float32)
    gx_TBG = jnp.swapaxes(gx_BTG, 0, 1)
    scan = nn.scan(_Recurrence, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=0, out_axes=0, reverse=self.reverse, unroll=self.unroll)
    zeros_BH = jnp.zeros((x_BTD.shape[0], self.hidden), jnp.float32)
    _, h_TBH = scan(self.hidden, self.dtype, name="recurrence")((zeros_BH, zeros_BH), gx_TBG)
    return jnp.swapaxes(h_TBH, 0, 1)


class Encoder(nn.Module):
  """x [B, T, N] -> latent trajectory z [B, T, K]; units >= latent_size are zeroed.

  Causal by default (z_t depends on x_<=t); `bidirectional` adds a reverse LSTM.
  """

  hidden: int
  latent: int
  bidirectional: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BTN: jax.Array, latent_size: Any = None) -> jax.Array:
    h_BTH = ScanLSTM(self.hidden, unroll=self.unroll, dtype=self.dtype, name="forward")(x_BTN)
    if self.bidirectional:
      back_BTH = ScanLSTM(self.hidden, reverse=True, unroll=self.unroll, dtype=self.dtype,
                          name="backward")(x_BTN)
      h_BTH = jnp.concatenate([h_BTH, back_BTH], axis=-1)
    z_BTK = nn.Dense(self.latent, dtype=self.dtype, name="to_latent")(h_BTH).astype(jnp.float32)
    if latent_size is not None:
      z_BTK = z_BTK * latent_mask(self.latent, latent_size)[None, None, :]
    return z_BTK


class Decoder(nn.Module):
  """z [B, T, K] -> reconstruction [B, T, N].

  kind="lstm": an LSTM over z then a Dense readout. kind="linear": a Dense
  readout of z_t alone (as the original), so the prediction at t depends only
  on z_t and the latent size measures per-time-step dimension.
  """

  neurons: int
  hidden: int
  kind: str = "lstm"
  unroll: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z_BTK: jax.Array) -> jax.Array:
    if self.kind not in DECODERS:
      raise ValueError(f"unknown decoder {self.kind!r}: choose one of {DECODERS}")
    h = z_BTK
    if self.kind == "lstm":
      h = ScanLSTM(self.hidden, unroll=self.unroll, dtype=self.dtype, name="lstm")(h)
    return nn.Dense(self.neurons, dtype=self.dtype, name="readout")(h).astype(jnp.float32)


class LSTMAutoencoder(nn.Module):
  """Sequence autoencoder x [B, T, N] -> (reconstruction [B, T, N], z [B, T, K]).

  Attributes:
    neurons: N, the output size.
    latent: K, the (padded) latent width; pass `latent_size` <= K to mask.
    hidden: LSTM units H of the encoder (and LSTM decoder).
    decoder: "lstm" or "linear".
    bidirectional: add a reverse-time encoder LSTM.
  """

  neurons: int
  latent: int
  hidden: int = 128
  decoder: str = "lstm"
  bidirectional: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32

  def setup(self):
    self.encoder = Encoder(self.hidden, self.latent, self.bidirectional, self.unroll, self.dtype)
    self.decoder_net = Decoder(self.neurons, self.hidden, self.decoder, self.unroll, self.dtype)

  def encode(self, x_BTN: jax.Array, latent_size: Any = None) -> jax.Array:
    return self.encoder(x_BTN, latent_size)

  def decode(self, z_BTK: jax.Array) -> jax.Array:
    return self.decoder_net(z_BTK)

  def __call__(self, x_BTN: jax.Array, latent_size: Any = None) -> tuple[jax.Array, jax.Array]:
    z_BTK = self.encode(x_BTN, latent_size)
    return self.decode(z_BTK), z_BTK
