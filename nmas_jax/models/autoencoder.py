"""The LSTM autoencoder: `Encoder`, `Decoder` and the family module `LSTMAutoencoder`.

The modules are plain `flax.linen` modules and can be embedded in other models:

  enc = Encoder(hidden=64, latent=10)
  z_BTK = enc.apply(params, x_BTN)                  # full width
  z_BTK = enc.apply(params, x_BTN, latent_size=4)   # units >= 4 are zero
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from nmas_jax.models.family import Family
from nmas_jax.models.layers import Dense, Dropout, latent_mask, per_unit_init
from nmas_jax.models.lstm import ScanLSTM

DECODERS = ("linear", "mlp", "lstm")

# The decoder's kernel that reads z, by decoder kind (within "decoder_net").
_READS_Z = {"lstm": ("lstm", "input"), "mlp": ("mlp_hidden",), "linear": ("readout",)}


def narrow_neurons(params: Any, in_I: jax.Array, out_O: jax.Array) -> Any:
  """Params of an `LSTMAutoencoder` cut to the neurons it reads (`in_I` [I]) and predicts
  (`out_O` [O]): those of a model of O neurons fed only the I inputs.

  A --neuron_counts model's encoder sees a few neurons and its loss covers a few more; the
  weights of every other neuron meet only zeros (masked input, zero loss weight) and get zero
  gradient. Running the model on the gathered params and inputs therefore gives the same
  outputs and gradients for the neurons it covers, with matmuls as narrow as its subset;
  autodiff through the gather scatters the gradient back to full width.
  """
  enc = dict(params["encoder"])
  for direction in ("forward", "backward"):
    if direction in enc:
      lstm = dict(enc[direction])
      lstm["input"] = {**lstm["input"], "kernel": jnp.take(lstm["input"]["kernel"], in_I, axis=0)}
      enc[direction] = lstm
  if "skip" in enc:
    enc["skip"] = {"kernel": jnp.take(enc["skip"]["kernel"], in_I, axis=0)}
  take = lambda r: {
    "kernel": jnp.take(r["kernel"], out_O, axis=-1),
    "bias": jnp.take(r["bias"], out_O, axis=-1),
  }
  dec = dict(params["decoder_net"])
  if "readout" in dec:
    dec["readout"] = take(dec["readout"])
  else:  # a `DecoderSet`: each decoder's readout
    dec = {kind: {**d, "readout": take(d["readout"])} for kind, d in dec.items()}
  return {**params, "encoder": enc, "decoder_net": dec}


class Encoder(nn.Module):
  """x [B, T, N] -> latent trajectory z [B, T, K]; units >= latent_size are zeroed.

  Bidirectional by default (z_t is inferred from the whole window; `bidirectional=False`: causal,
  z_t depends on x_<=t only); `linear_skip`
  adds a linear map of x_t (z_t = LSTM(x)_t W + x_t S + b), so PCA's projection is one setting
  of the weights away. The latent units (`bands` blocks of latent / bands) are drawn per unit
  (`per_unit_init`).
  """

  hidden: int
  latent: int
  bidirectional: bool = True
  unroll: int = 1
  dtype: Any = jnp.float32
  bands: int = 1
  linear_skip: bool = False

  @nn.compact
  def __call__(self, x_BTN: jax.Array, latent_size: Any = None) -> jax.Array:
    h_BTH = ScanLSTM(self.hidden, unroll=self.unroll, dtype=self.dtype, name="forward")(x_BTN)
    if self.bidirectional:
      back_BTH = ScanLSTM(
        self.hidden, reverse=True, unroll=self.unroll, dtype=self.dtype, name="backward"
      )(x_BTN)
      h_BTH = jnp.concatenate([h_BTH, back_BTH], axis=-1)
    z_BTK = Dense(
      self.latent, dtype=self.dtype, kernel_init=per_unit_init(-1, self.bands), name="to_latent"
    )(h_BTH).astype(jnp.float32)
    if self.linear_skip:
      z_BTK = z_BTK + Dense(
        self.latent,
        use_bias=False,
        dtype=self.dtype,
        kernel_init=per_unit_init(-1, self.bands),
        name="skip",
      )(x_BTN).astype(jnp.float32)
    if latent_size is not None:
      z_BTK = z_BTK * latent_mask(self.latent, latent_size)[None, None, :]
    return z_BTK


class Decoder(nn.Module):
  """z [B, T, K] -> reconstruction [B, T, N].

  kind="linear": a Dense readout of z_t alone (as the original), so the
  prediction at t depends only on z_t and the latent size is a linear
  dimension per time step. kind="mlp": a per-time-step MLP of z_t (`mlp_hidden`
  Mish units, as the original's head), so the latent size is the dimension of
  a curved manifold. kind="lstm": an LSTM over z then a Dense readout.
  The output is the likelihood's natural parameter (mean, or log-rate). The kernel that reads
  z (`latent_bands` blocks of units) is drawn per unit (`per_unit_init`).
  """

  neurons: int
  hidden: int
  kind: str = "mlp"
  unroll: int = 1
  dtype: Any = jnp.float32
  mlp_hidden: int = 128
  latent_bands: int = 1

  @nn.compact
  def __call__(self, z_BTK: jax.Array) -> jax.Array:
    if self.kind not in DECODERS:
      raise ValueError(f"unknown decoder {self.kind!r}: choose one of {DECODERS}")
    h, reads_z = z_BTK, per_unit_init(0, self.latent_bands)
    if self.kind == "lstm":
      h = ScanLSTM(
        self.hidden, unroll=self.unroll, dtype=self.dtype, input_init=reads_z, name="lstm"
      )(h)
    elif self.kind == "mlp":
      h = jax.nn.mish(
        Dense(self.mlp_hidden, dtype=self.dtype, kernel_init=reads_z, name="mlp_hidden")(h).astype(
          jnp.float32
        )
      )
    readout_init = reads_z if self.kind == "linear" else nn.initializers.lecun_normal()
    return Dense(self.neurons, dtype=self.dtype, kernel_init=readout_init, name="readout")(
      h
    ).astype(jnp.float32)


class DecoderSet(nn.Module):
  """Several `Decoder`s of one z [B, T, K], one per kind in `kinds` (params under each kind's
  name), of which each model uses one: the decoder axis of a sweep of several decoders.

  `choice` (a traced index into `kinds`) picks the output: every decoder runs, and the others'
  weights get zero gradient. With `active` >= 0 only that decoder runs (the by-latent path,
  whose parts have one decoder each); `choice` is then ignored.
  """

  neurons: int
  hidden: int
  kinds: tuple[str, ...]
  unroll: int = 1
  dtype: Any = jnp.float32
  mlp_hidden: int = 128
  latent_bands: int = 1
  active: int = -1

  @nn.compact
  def __call__(self, z_BTK: jax.Array, choice: Any = 0) -> jax.Array:
    make = lambda kind: Decoder(
      self.neurons,
      self.hidden,
      kind,
      self.unroll,
      self.dtype,
      self.mlp_hidden,
      self.latent_bands,
      name=kind,
    )
    if self.active >= 0:
      return make(self.kinds[self.active])(z_BTK)
    y_BTN = make(self.kinds[0])(z_BTK)
    for j, kind in enumerate(self.kinds[1:], 1):
      y_BTN = jnp.where(choice == j, make(kind)(z_BTK), y_BTN)
    return y_BTN


class LSTMAutoencoder(Family, nn.Module):
  """Sequence autoencoder x [B, T, N] -> (reconstruction [B, T, N], z [B, T, K]).

  Attributes:
    neurons: N, the output size.
    latent: K, the (padded) latent width; pass `latent_size` <= K to mask.
    hidden: LSTM units H of the encoder (and LSTM decoder).
    decoder: "linear", "mlp" or "lstm" (see `Decoder`), or several comma-separated (a
      `DecoderSet`: `latent_size` is then (k, decoder index) per model).
    bidirectional: add a reverse-time encoder LSTM.
    linear_skip: add a linear path from the input to the latent beside the encoder LSTM.
    decoder_hidden: hidden units of the mlp decoder.
    dropout: rate of dropout on the encoder's input while training (`train=True`, which
      needs a "dropout" rng): neurons dropped at random, so the encoder cannot lean on any one.
    cd_rate: coordinated dropout in `train.train_step` (the loss scores input elements only
      where the input hid them); not used by the module itself.
  """

  neurons: int
  latent: int
  hidden: int = 64
  decoder: str = "mlp"
  bidirectional: bool = True
  unroll: int = 1
  dtype: Any = jnp.float32
  decoder_hidden: int = 128
  dropout: float = 0.2
  cd_rate: float = 0.0
  linear_skip: bool = False
  active_decoder: int = -1  # several decoders: run only this one (`DecoderSet.active`)

  def setup(self):
    self.encoder = Encoder(
      self.hidden,
      self.encoder_width(),
      self.bidirectional,
      self.unroll,
      self.dtype,
      bands=self.latent_bands(),
      linear_skip=self.linear_skip,
    )
    kinds = self.decoders()
    self.decoder_net = (
      DecoderSet(
        self.neurons,
        self.hidden,
        kinds,
        self.unroll,
        self.dtype,
        self.decoder_hidden,
        self.latent_bands(),
        self.active_decoder,
      )
      if len(kinds) > 1
      else Decoder(
        self.neurons,
        self.hidden,
        self.decoder,
        self.unroll,
        self.dtype,
        self.decoder_hidden,
        latent_bands=self.latent_bands(),
      )
    )
    self.input_dropout = Dropout(self.dropout)

  def encoder_width(self) -> int:
    """Units the encoder emits (the padded latent width)."""
    return self.latent

  def latent_bands(self) -> int:
    """Blocks of `latent` units the latent holds (one; a band each for multiscale)."""
    return 1

  def decoders(self) -> tuple[str, ...]:
    """The decoder kinds: one, or several for a sweep's decoder axis (`DecoderSet`)."""
    return tuple(self.decoder.split(","))

  def _paths(self, tail) -> list[tuple[str, ...]]:
    """("decoder_net", ...) + tail(kind) for each decoder (under its kind's name when several)."""
    kinds = self.decoders()
    if len(kinds) == 1:
      return [("decoder_net",) + tail(kinds[0])]
    return [("decoder_net", kind) + tail(kind) for kind in kinds]

  def latent_inputs(self) -> list[tuple[str, ...]]:
    """Paths of the kernels whose input axis is the latent (see `scale_latent_inputs`)."""
    return self._paths(lambda kind: _READS_Z[kind])

  def _split(self, latent_size: Any) -> tuple[Any, Any]:
    """(latent size, decoder index) from a model's argument (`latent_size`)."""
    if len(self.decoders()) == 1 or latent_size is None:
      return latent_size, 0
    both = jnp.asarray(latent_size)
    return (both, 0) if both.ndim == 0 else (both[0], both[1])

  def encode(self, x_BTN: jax.Array, latent_size: Any = None) -> jax.Array:
    return self.encoder(x_BTN, latent_size)

  def decode(self, z_BTK: jax.Array, choice: Any = 0) -> jax.Array:
    return self.decoder_net(z_BTK) if len(self.decoders()) == 1 else self.decoder_net(z_BTK, choice)

  def __call__(
    self, x_BTN: jax.Array, latent_size: Any = None, train: bool = False
  ) -> tuple[jax.Array, jax.Array]:
    x_BTN = self.input_dropout(x_BTN, deterministic=not train)
    k, choice = self._split(latent_size)
    z_BTK = self.encode(x_BTN, k)
    return self.decode(z_BTK, choice), z_BTK

  # The family interface (`Family`).
  readout_path: ClassVar[tuple[str, ...]] = ("decoder_net", "readout")
  decoder_axis: ClassVar[bool] = True

  def readout_paths(self) -> list[tuple[str, ...]]:
    return self._paths(lambda kind: ("readout",))

  def latent_total(self, latent: Any) -> Any:
    if len(self.decoders()) > 1 and jnp.ndim(latent):
      return jnp.asarray(latent)[0]  # (k, decoder index)
    return super().latent_total(latent)

  def for_part(self, key: tuple[int, ...]) -> LSTMAutoencoder:
    return self.clone(active_decoder=key[1]) if len(key) > 1 else self

  @classmethod
  def from_settings(cls, s: Any, neurons: int) -> LSTMAutoencoder:
    return cls(**autoencoder_fields(s, neurons))

  @classmethod
  def describe(cls, config: dict[str, Any]) -> str:
    return (
      f"- model: LSTM encoder ({config['hidden']} units) -> latent -> {config['decoder']} decoder"
    )

  @classmethod
  def step_flops(cls, s: Any, neurons: int, batch: int, window: int) -> float:
    """Encoder LSTM -> latent Dense -> decoder (LSTM or none) -> readout Dense, at each latent
    size k. A matmul costs 2mnk forward and twice that backward, except the encoder's input
    projection, whose input needs no gradient."""
    bt, h, n = batch * window, s.hidden, neurons
    total = 0.0
    for k in s.latents:
      for decoder in s.decoder.split(","):  # a model per latent size and decoder
        enc_in = 2 * bt * n * 4 * h * 2  # forward + weight gradient only
        enc_rec = 2 * bt * h * 4 * h * 3
        to_lat = 2 * bt * h * k * 3
        if decoder == "lstm":
          dec = (2 * bt * k * 4 * h + 2 * bt * h * 4 * h) * 3 + 2 * bt * h * n * 3
        else:
          dec = 2 * bt * k * n * 3
        total += enc_in + enc_rec + to_lat + dec
    return total

  def narrows(self) -> bool:
    return self.cd_rate == 0  # coordinated dropout reads the full input and loss masks

  def narrowed(self, params: Any, in_I: jax.Array, out_O: jax.Array) -> tuple[Any, Any]:
    return self.clone(neurons=out_O.shape[0]), narrow_neurons(params, in_I, out_O)


def autoencoder_fields(s: Any, neurons: int) -> dict[str, Any]:
  """`LSTMAutoencoder`'s fields from settings `s` (the multiscale family adds its bands)."""
  return dict(
    neurons=neurons,
    latent=max(s.latents),
    hidden=s.hidden,
    decoder=s.decoder,
    bidirectional=s.bidirectional,
    unroll=s.unroll,
    dtype=jnp.bfloat16 if s.dtype == "bfloat16" else jnp.float32,
    decoder_hidden=s.decoder_hidden,
    dropout=s.dropout,
    cd_rate=s.cd_rate,
    linear_skip=s.linear_skip,
  )
