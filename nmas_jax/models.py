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

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax.config import DECODERS, Settings


def latent_mask(width: int, latent_size: Any) -> jax.Array:
  """[width] float mask, 1 for units < latent_size (a Python int or traced scalar)."""
  return (jnp.arange(width) < latent_size).astype(jnp.float32)


# The decoder's kernel that reads z, by decoder kind (within "decoder_net"). In this order, the
# first whose module a decoder's params hold is the one (every kind has a "readout").
_READS_Z = {"lstm": ("lstm", "input"), "mlp": ("mlp_hidden",), "linear": ("readout",)}


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
    other = shape[:axis % len(shape)] + shape[axis % len(shape) + 1:]
    fan_in = 1 if axis % len(shape) == 0 else int(np.prod(shape[:-1]))
    std = (1.0 / fan_in) ** 0.5 / .87962566103423978  # flax's lecun_normal correction

    def unit(b, j):
      k = jax.random.fold_in(jax.random.fold_in(key, b), j)
      return jax.random.truncated_normal(k, -2.0, 2.0, other, jnp.float32) * std

    units = jax.vmap(lambda b: jax.vmap(lambda j: unit(b, j))(jnp.arange(width)))(
        jnp.arange(bands)).reshape((bands * width,) + other)
    return jnp.moveaxis(units, 0, axis).astype(dtype)

  return init


def scale_latent_inputs(model: nn.Module, params: Any, latent: Any) -> Any:
  """`params` with the kernels that read the latent divided by sqrt(k) (k = `latent`, summed
  over bands): completes `per_unit_init`, so a padded model of latent size k starts as an
  unpadded width-k model drawn from the same key would (lecun scale, fan_in k)."""
  k = jnp.maximum(jnp.sum(jnp.asarray(latent, jnp.float32)), 1.0)
  for path in model.latent_inputs():
    params = _update(params, path, lambda kernel: kernel / jnp.sqrt(k).astype(kernel.dtype))
  return params


def _update(params: Any, path: tuple[str, ...], fn) -> Any:
  """`params` with params[path...]["kernel"] replaced by fn of it (a new dict along the path)."""
  if not path:
    return {**params, "kernel": fn(params["kernel"])}
  return {**params, path[0]: _update(params[path[0]], path[1:], fn)}


def slice_latent(params: Any, k: int) -> Any:
  """Params of a padded `LSTMAutoencoder` cut to latent width k: those of a width-k model.

  A model of latent size k only ever uses these weights (the rest are masked
  out and get zero gradient), so running `LSTMAutoencoder(latent=k)` on the cut
  params gives the same outputs and gradients without the padded matmul work;
  autodiff through the cut pads the gradient back with zeros.
  """
  enc = dict(params["encoder"])
  enc["to_latent"] = {"kernel": enc["to_latent"]["kernel"][..., :k],
                      "bias": enc["to_latent"]["bias"][..., :k]}
  if "skip" in enc:
    enc["skip"] = {"kernel": enc["skip"]["kernel"][..., :k]}
  dec = params["decoder_net"]
  path = next(p for p in _READS_Z.values() if p[0] in dec)
  dec = _update(dec, path, lambda kernel: kernel[..., :k, :])
  return {**params, "encoder": enc, "decoder_net": dec}


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
  dec = dict(params["decoder_net"])
  dec["readout"] = {"kernel": jnp.take(dec["readout"]["kernel"], out_O, axis=-1),
                    "bias": jnp.take(dec["readout"]["bias"], out_O, axis=-1)}
  return {**params, "encoder": enc, "decoder_net": dec}


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
    bias = (self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = _matmul(x.reshape(-1, x.shape[-1]), kernel).reshape(*x.shape[:-1], self.features)
    return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def _gate_bias_init(key, shape, dtype=jnp.float32):
  """Zero biases except forget gates at +1, so memory is kept early in training."""
  del key
  hidden = shape[-1] // 4
  return jnp.zeros(shape, dtype).at[hidden: 2 * hidden].set(1.0)


def _gate_affine(hidden: int) -> tuple[jax.Array, jax.Array]:
  """[4H] scale and shift with act = tanh(pre * scale) * scale + shift for gates (i, f, g, o).

  sigmoid(x) = tanh(x / 2) / 2 + 1/2 on the i, f, o lanes and tanh on g: all
  four gates in one elementwise op, so XLA emits one fusion per step instead
  of four plus a concatenate.
  """
  half, one, zero = jnp.full(hidden, 0.5), jnp.ones(hidden), jnp.zeros(hidden)
  return jnp.concatenate([half, half, one, half]), jnp.concatenate([half, half, zero, half])


class _Recurrence(nn.Module):
  """One LSTM time step given precomputed input gates; scanned over time.

  Emits [h, c, activated gates (i, f, g, o)] concatenated; the hand-written
  backward pass of `ScanLSTM` reuses them instead of recomputing them.
  """

  hidden: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry, gx_BG):
    h_BH, c_BH = carry
    g_BG = gx_BG + nn.Dense(4 * self.hidden, use_bias=False, dtype=self.dtype,
                            name="hidden")(h_BH).astype(jnp.float32)
    scale_G, shift_G = _gate_affine(self.hidden)
    scale_BG, shift_BG = scale_G[None, :], shift_G[None, :]
    act_BG = jnp.tanh(g_BG * scale_BG) * scale_BG + shift_BG  # sigmoid i, f, o; tanh g
    i, f, g, o = jnp.split(act_BG, 4, axis=-1)
    c_BH = f * c_BH + i * g
    h_BH = o * jnp.tanh(c_BH)
    # One stacked output [B, 6H] instead of three: one in-place update per step, and one
    # zero-initialised output buffer to copy per scan (docs/benchmarks.md).
    return (h_BH, c_BH), jnp.concatenate([h_BH, c_BH, act_BG], axis=-1)


def _recurrence_backward(w_HG: jax.Array, h_TBH: jax.Array, c_TBH: jax.Array, act_TBG: jax.Array,
                         dh_TBH: jax.Array, dtype: Any, unroll: int = 1
                         ) -> tuple[jax.Array, jax.Array]:
  """Gradients (d w_HG, d gx_TBG) of an LSTM recurrence from its stored activations.

  Why by hand: autodiff of a scan accumulates the recurrent-kernel gradient
  with one small outer product per time step inside the loop. Here the loop
  carries only (dh, dc) and one [B, 4H] x [4H, H] matmul per step; every
  elementwise factor is computed for all steps at once before the loop, and
  the kernel gradient is one [H, T*B] x [T*B, 4H] matmul after it.
  """
  i, f, g, o = jnp.split(act_TBG, 4, axis=-1)
  c_prev_TBH = jnp.concatenate([jnp.zeros_like(c_TBH[:1]), c_TBH[:-1]], axis=0)
  h_prev_TBH = jnp.concatenate([jnp.zeros_like(h_TBH[:1]), h_TBH[:-1]], axis=0)
  tc = jnp.tanh(c_TBH)
  dc_from_dh_TBH = o * (1.0 - tc * tc)
  # d pre-activation = [dc, dc, dc, dh] * factor: sigmoid'/tanh' times what each gate multiplies.
  factor_TBG = jnp.concatenate([g * i * (1.0 - i), c_prev_TBH * f * (1.0 - f),
                                i * (1.0 - g * g), tc * o * (1.0 - o)], axis=-1)
  w_t_GH = w_HG.T.astype(dtype)

  def step(carry, xs):
    dh_next_BH, dc_next_BH = carry
    dh_out_BH, dcdh_BH, factor_BG, f_BH = xs
    dh_BH = dh_out_BH + dh_next_BH
    dc_BH = dc_next_BH + dh_BH * dcdh_BH
    dpre_BG = jnp.concatenate([dc_BH, dc_BH, dc_BH, dh_BH], axis=-1) * factor_BG
    dh_prev_BH = jnp.dot(dpre_BG.astype(dtype), w_t_GH, preferred_element_type=jnp.float32)
    return (dh_prev_BH, dc_BH * f_BH), dpre_BG

  zeros_BH = jnp.zeros_like(h_TBH[0])
  _, dpre_TBG = jax.lax.scan(step, (zeros_BH, zeros_BH), (dh_TBH, dc_from_dh_TBH, factor_TBG, f),
                             reverse=True, unroll=unroll)
  dw_HG = jnp.einsum("tbh,tbg->hg", h_prev_TBH.astype(dtype), dpre_TBG.astype(dtype),
                     preferred_element_type=jnp.float32)
  return dw_HG, dpre_TBG


def _run_recurrence(mdl, gx_TBG):
  zeros_BH = jnp.zeros((gx_TBG.shape[1], mdl.hidden), jnp.float32)
  _, out_TBF = mdl((zeros_BH, zeros_BH), gx_TBG)  # F = 6H: h, c, gates
  hidden = mdl.hidden
  return out_TBF[..., :hidden], out_TBF[..., hidden:2 * hidden], out_TBF[..., 2 * hidden:]


def _recurrence_fn(mdl, gx_TBG):
  return _run_recurrence(mdl, gx_TBG)[0]


def _recurrence_fwd(mdl, gx_TBG):
  h_TBH, c_TBH, act_TBG = _run_recurrence(mdl, gx_TBG)
  w_HG = mdl.variables["params"]["hidden"]["kernel"]
  return h_TBH, (w_HG, h_TBH, c_TBH, act_TBG)


def _recurrence_bwd(res, dh_TBH, *, dtype, unroll):
  w_HG, h_TBH, c_TBH, act_TBG = res
  dw_HG, dgx_TBG = _recurrence_backward(w_HG, h_TBH, c_TBH, act_TBG, dh_TBH, dtype, unroll)
  return {"params": {"hidden": {"kernel": dw_HG}}}, dgx_TBG


class ScanLSTM(nn.Module):
  """LSTM over time: x [B, T, D] -> h [B, T, H].

  The input projection x -> 4H gates is one matmul over all time steps, hoisted
  out of the recurrence; only h -> 4H runs inside `nn.scan`, time-major. The
  recurrence has a hand-written backward pass (`_recurrence_backward`), exact
  to float rounding; `custom_grad=False` uses autodiff of the scan instead.
  `dtype` is the matmul dtype (e.g. bfloat16); cell state stays float32.
  """

  hidden: int
  reverse: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32
  custom_grad: bool = True
  input_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x_BTD: jax.Array) -> jax.Array:
    # Time-major before the projection: XLA then moves fewer bytes in transposes.
    gx_TBG = Dense(4 * self.hidden, dtype=self.dtype, bias_init=_gate_bias_init,
                   kernel_init=self.input_init, name="input")(
                       jnp.swapaxes(x_BTD, 0, 1)).astype(jnp.float32)
    if self.reverse:
      gx_TBG = gx_TBG[::-1]
    scan = nn.scan(_Recurrence, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=0, out_axes=0, unroll=self.unroll)
    cell = scan(self.hidden, self.dtype, name="recurrence")
    if self.custom_grad:
      h_TBH = nn.custom_vjp(_recurrence_fn, forward_fn=_recurrence_fwd,
                            backward_fn=functools.partial(_recurrence_bwd, dtype=self.dtype,
                                                          unroll=self.unroll)
                            )(cell, gx_TBG)
    else:
      h_TBH = _recurrence_fn(cell, gx_TBG)
    if self.reverse:
      h_TBH = h_TBH[::-1]
    return jnp.swapaxes(h_TBH, 0, 1)


class Encoder(nn.Module):
  """x [B, T, N] -> latent trajectory z [B, T, K]; units >= latent_size are zeroed.

  Causal by default (z_t depends on x_<=t); `bidirectional` adds a reverse LSTM; `linear_skip`
  adds a linear map of x_t (z_t = LSTM(x)_t W + x_t S + b), so PCA's projection is one setting
  of the weights away. The latent units (`bands` blocks of latent / bands) are drawn per unit
  (`per_unit_init`).
  """

  hidden: int
  latent: int
  bidirectional: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32
  bands: int = 1
  linear_skip: bool = False

  @nn.compact
  def __call__(self, x_BTN: jax.Array, latent_size: Any = None) -> jax.Array:
    h_BTH = ScanLSTM(self.hidden, unroll=self.unroll, dtype=self.dtype, name="forward")(x_BTN)
    if self.bidirectional:
      back_BTH = ScanLSTM(self.hidden, reverse=True, unroll=self.unroll, dtype=self.dtype,
                          name="backward")(x_BTN)
      h_BTH = jnp.concatenate([h_BTH, back_BTH], axis=-1)
    z_BTK = Dense(self.latent, dtype=self.dtype, kernel_init=per_unit_init(-1, self.bands),
                  name="to_latent")(h_BTH).astype(jnp.float32)
    if self.linear_skip:
      z_BTK = z_BTK + Dense(self.latent, use_bias=False, dtype=self.dtype,
                            kernel_init=per_unit_init(-1, self.bands), name="skip")(
                                x_BTN).astype(jnp.float32)
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
  kind: str = "lstm"
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
      h = ScanLSTM(self.hidden, unroll=self.unroll, dtype=self.dtype, input_init=reads_z,
                   name="lstm")(h)
    elif self.kind == "mlp":
      h = jax.nn.mish(Dense(self.mlp_hidden, dtype=self.dtype, kernel_init=reads_z,
                            name="mlp_hidden")(h).astype(jnp.float32))
    readout_init = reads_z if self.kind == "linear" else nn.initializers.lecun_normal()
    return Dense(self.neurons, dtype=self.dtype, kernel_init=readout_init,
                 name="readout")(h).astype(jnp.float32)


class LSTMAutoencoder(nn.Module):
  """Sequence autoencoder x [B, T, N] -> (reconstruction [B, T, N], z [B, T, K]).

  Attributes:
    neurons: N, the output size.
    latent: K, the (padded) latent width; pass `latent_size` <= K to mask.
    hidden: LSTM units H of the encoder (and LSTM decoder).
    decoder: "linear", "mlp" or "lstm" (see `Decoder`).
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
  hidden: int = 128
  decoder: str = "lstm"
  bidirectional: bool = False
  unroll: int = 1
  dtype: Any = jnp.float32
  decoder_hidden: int = 128
  dropout: float = 0.0
  cd_rate: float = 0.0
  linear_skip: bool = False

  def setup(self):
    self.encoder = Encoder(self.hidden, self.encoder_width(), self.bidirectional, self.unroll,
                           self.dtype, bands=self.latent_bands(), linear_skip=self.linear_skip)
    self.decoder_net = Decoder(self.neurons, self.hidden, self.decoder, self.unroll, self.dtype,
                               self.decoder_hidden, latent_bands=self.latent_bands())
    self.input_dropout = nn.Dropout(self.dropout)

  def encoder_width(self) -> int:
    """Units the encoder emits (the padded latent width)."""
    return self.latent

  def latent_bands(self) -> int:
    """Blocks of `latent` units the latent holds (one; a band each for multiscale)."""
    return 1

  def latent_inputs(self) -> list[tuple[str, ...]]:
    """Paths of the kernels whose input axis is the latent (see `scale_latent_inputs`)."""
    return [("decoder_net",) + _READS_Z[self.decoder]]

  def encode(self, x_BTN: jax.Array, latent_size: Any = None) -> jax.Array:
    return self.encoder(x_BTN, latent_size)

  def decode(self, z_BTK: jax.Array) -> jax.Array:
    return self.decoder_net(z_BTK)

  def __call__(self, x_BTN: jax.Array, latent_size: Any = None,
               train: bool = False) -> tuple[jax.Array, jax.Array]:
    if train and self.dropout > 0:
      x_BTN = self.input_dropout(x_BTN, deterministic=False)
    z_BTK = self.encode(x_BTN, latent_size)
    return self.decode(z_BTK), z_BTK


def band_mask(width: int, counts: Any) -> jax.Array:
  """[bands * width] float mask of a multiscale model: unit j of band b is on when j < counts[b]."""
  counts = jnp.asarray(counts)
  return (jnp.arange(width)[None, :] < counts[:, None]).astype(jnp.float32).reshape(-1)


def leaky_integrate(u_BTK: jax.Array, decay_K: jax.Array) -> jax.Array:
  """z_t = a z_{t-1} + (1 - a) u_t per unit (a = decay_K), starting at z_0 = u_0: each unit a
  leaky integrator of its innovations with time constant -1 / log(a) bins."""
  a_1K = decay_K[None, :]

  def step(z_BK, u_BK):
    z_BK = a_1K * z_BK + (1.0 - a_1K) * u_BK
    return z_BK, z_BK

  u_TBK = jnp.swapaxes(u_BTK, 0, 1)
  _, z_TBK = jax.lax.scan(step, u_TBK[0], u_TBK)
  return jnp.swapaxes(z_TBK, 0, 1)


def bounded_follow(v_BTK: jax.Array, decay_K: jax.Array) -> jax.Array:
  """Leaky integrators whose bounded innovations step toward the encoder's proposal v:
  z_0 = tanh(v_0), z_t = a z_{t-1} + (1 - a) u_t with u_t = tanh((v_t - a z_{t-1}) / (1 - a)).

  The same trajectories as `leaky_integrate` of innovations in [-1, 1] (|u_t| <= 1, so a unit
  moves at most 2 (1 - a) per bin), but where the unit can keep up, z_t is about v_t: the
  encoder says where a unit should be rather than how fast it should move, so a slow unit's
  gradient does not pass through the factor 1 - a."""
  a_1K = decay_K[None, :]

  def step(z_BK, v_BK):
    z_BK = a_1K * z_BK + (1.0 - a_1K) * jnp.tanh((v_BK - a_1K * z_BK) / (1.0 - a_1K))
    return z_BK, z_BK

  v_TBK = jnp.swapaxes(v_BTK, 0, 1)
  z0_BK = jnp.tanh(v_TBK[0])
  _, z_TBK = jax.lax.scan(step, z0_BK, v_TBK[1:])
  return jnp.swapaxes(jnp.concatenate([z0_BK[None], z_TBK], axis=0), 0, 1)


class MultiscaleAutoencoder(LSTMAutoencoder):
  """The autoencoder with latents in bands of fixed time constants: x [B, T, N] -> (y [B, T, N],
  z [B, T, bands * latent]).

  Band b's units are leaky integrators with time constant `timescales[b]` bins of bounded
  innovations (in [-1, 1]), so a unit moves at most 2 (1 - a) of its range per bin (about
  2 / tau) and a slow unit cannot follow fast changes. The encoder proposes where each unit
  should be and the innovation is the bounded step toward it (`bounded_follow`): proposing
  the innovations themselves (`leaky_integrate` of tanh) made a slow unit's gradient pass
  through 1 - a, and slow units trained far worse than fast ones (docs/dimension.md).
  `latent` is each band's padded width; `latent_size` [bands] masks band b to its first
  counts[b] units (a padded model equals an unpadded one). The decoder reads all bands' units.
  """

  timescales: tuple[int, ...] = (2, 50)
  decoder: str = "linear"

  def encoder_width(self) -> int:
    return self.latent * len(self.timescales)

  def latent_bands(self) -> int:
    return len(self.timescales)

  def encode(self, x_BTN: jax.Array, latent_size: Any = None) -> jax.Array:
    counts = (jnp.full(len(self.timescales), self.latent) if latent_size is None
              else jnp.asarray(latent_size))
    decay_K = jnp.repeat(jnp.exp(-1.0 / jnp.asarray(self.timescales, jnp.float32)), self.latent)
    z_BTK = bounded_follow(self.encoder(x_BTN), decay_K)
    return z_BTK * band_mask(self.latent, counts)[None, None, :]


def make_model(cfg: Settings, neurons: int) -> nn.Module:
  """The padded model every model of a sweep shares (width = the largest latent; per band for
  multiscale)."""
  if cfg.model == "lfads":
    return LFADS(neurons=neurons, latent=max(cfg.latents), gen_dim=cfg.gen_dim,
                 ic_enc_dim=cfg.ic_enc_dim, ci_enc_dim=cfg.ci_enc_dim, con_dim=cfg.con_dim,
                 co_dim=cfg.co_dim, dropout=cfg.dropout, kl_ic_scale=cfg.kl_ic_scale,
                 kl_co_scale=cfg.kl_co_scale, l2_gen_scale=cfg.l2_gen_scale, cd_rate=cfg.cd_rate,
                 warmup_steps=cfg.kl_warmup_steps)
  autoencoder = dict(neurons=neurons, latent=max(cfg.latents), hidden=cfg.hidden,
                     decoder=cfg.decoder, bidirectional=cfg.bidirectional, unroll=cfg.unroll,
                     dtype=jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32,
                     decoder_hidden=cfg.decoder_hidden, dropout=cfg.dropout, cd_rate=cfg.cd_rate,
                     linear_skip=cfg.linear_skip)
  if cfg.model == "multiscale":
    return MultiscaleAutoencoder(timescales=tuple(cfg.timescales), **autoencoder)
  return LSTMAutoencoder(**autoencoder)


# ----------------------------------------------------------------------------
# LFADS (Sussillo et al. 2016; Pandarinath et al. 2018), as lfads-torch builds it.


class _GRUStep(nn.Module):
  """One GRU step given the input's precomputed gate pre-activations [B, 3H] (r, z, n), with the
  hidden state clipped to +-clip (lfads-torch's ClippedGRUCell, no recurrent bias)."""

  features: int
  clip: float = 5.0

  @nn.compact
  def __call__(self, h_BH: jax.Array, gx_BG: jax.Array) -> tuple[jax.Array, jax.Array]:
    gh_BG = Dense(3 * self.features, use_bias=False, name="recurrent")(h_BH)
    xr, xz, xn = jnp.split(gx_BG, 3, axis=-1)
    hr, hz, hn = jnp.split(gh_BG, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    h = z * h_BH + (1.0 - z) * jnp.tanh(xn + r * hn)
    h = jnp.clip(h, -self.clip, self.clip)
    return h, h


class ScanGRU(nn.Module):
  """A GRU over time, x [B, T, D] -> (h [B, T, H], last h [B, H]): the input projection is one
  matmul over all time steps, only h -> 3H runs inside `nn.scan`."""

  features: int
  reverse: bool = False
  clip: float = 5.0

  @nn.compact
  def __call__(self, x_BTD: jax.Array, h0_BH: jax.Array | None = None):
    gx_BTG = Dense(3 * self.features, name="input")(x_BTD)
    h0 = jnp.zeros((x_BTD.shape[0], self.features), gx_BTG.dtype) if h0_BH is None else h0_BH
    scan = nn.scan(_GRUStep, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1, reverse=self.reverse)
    h_last, h_BTH = scan(self.features, self.clip, name="cell")(h0, gx_BTG)
    return h_BTH, h_last


def _gaussian_kl(mean, logvar, prior_mean, prior_logvar) -> jax.Array:
  """KL(N(mean, e^logvar) || N(prior_mean, e^prior_logvar)), summed over the last axis."""
  return 0.5 * jnp.sum(prior_logvar - logvar + (jnp.exp(logvar) + (mean - prior_mean) ** 2)
                       / jnp.exp(prior_logvar) - 1.0, axis=-1)


def _sample(module: nn.Module, mean, logvar, sample: bool):
  if not sample:
    return mean
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(module.make_rng("sample"), mean.shape)


class _LFADSStep(nn.Module):
  """One time step of the controller (optional) and the generator; factors masked to width k."""

  gen_dim: int
  con_dim: int
  co_dim: int
  latent: int
  clip: float
  sample: bool
  dropout: float

  @nn.compact
  def __call__(self, carry, gci_BG: jax.Array, mask_K: jax.Array):
    g, c, f, u_prev = carry               # generator, controller, factors [B, K], inputs
    kl = jnp.zeros(g.shape[:1], g.dtype)
    if self.co_dim:
      gates = gci_BG + Dense(3 * self.con_dim, use_bias=False, kernel_init=per_unit_init(0),
                             name="con_from_factors")(f)
      c, _ = _GRUStep(self.con_dim, self.clip, name="controller")(c, gates)
      mean, logvar = jnp.split(Dense(2 * self.co_dim, name="co_posterior")(c), 2, axis=-1)
      u = _sample(self, mean, logvar, self.sample)
      # Autoregressive AR(1) prior per input channel (lfads-torch's default): time constant
      # tau and process variance learned; the KL is a one-sample estimate log q(u) - log p(u).
      log_tau = self.param("ar_log_tau", nn.initializers.constant(jnp.log(10.0)), (self.co_dim,))
      log_var = self.param("ar_log_var", nn.initializers.constant(jnp.log(0.1)), (self.co_dim,))
      alpha = jnp.exp(-1.0 / jnp.exp(log_tau))[None, :]
      prior_logvar = (log_var + jnp.log1p(-alpha[0] ** 2))[None, :]   # innovation variance
      log_q = -0.5 * jnp.sum(logvar + (u - mean) ** 2 / jnp.exp(logvar), axis=-1)
      log_p = -0.5 * jnp.sum(prior_logvar + (u - alpha * u_prev) ** 2 / jnp.exp(prior_logvar), axis=-1)
      kl = log_q - log_p
      gen_in = u
    else:
      u = u_prev
      gen_in = jnp.zeros(g.shape[:1] + (1,), g.dtype)
    g, _ = _GRUStep(self.gen_dim, self.clip, name="generator")(
        g, Dense(3 * self.gen_dim, name="gen_input")(gen_in))
    g_drop = nn.Dropout(self.dropout, deterministic=not self.sample)(g)
    f = Dense(self.latent, use_bias=False, kernel_init=per_unit_init(-1),
              name="factors")(g_drop) * mask_K[None, :]
    return (g, c, f, u), (f, kl)


class LFADS(nn.Module):
  """LFADS: a bidirectional GRU encoder infers the generator's initial condition, an optional
  controller GRU infers inputs of size `co_dim`, a generator GRU unrolls, and factors of width
  `latent` (masked to `latent_size`, so a padded model equals an unpadded one) are read out to
  log-rates (Poisson) or means (Gaussian): y [B, T, N]. Dropout (rate `dropout`) acts on the
  encoders' inputs and outputs and the generator state before the factors (as lfads-torch; not
  on the initial condition, which would perturb the whole generated trajectory), never on a
  factor-width tensor, so padding changes no random draw.

  `__call__(x_BTN, latent_size=None, sample=False) -> (y_BTN, factors_BTK)`. With `sample`
  (or `train`, as the sweep's train step calls models),
  the posteriors are sampled (rng stream "sample") and dropout is on (stream "dropout"). The KL
  terms are sown into the "losses" collection (`kl_ic` [B], `kl_co` [B]; apply with
  `mutable=["losses"]`); `lfads_l2` gives the recurrent-kernel penalty and
  `coordinated_dropout` the input/loss masks of coordinated dropout.
  """

  neurons: int
  latent: int
  gen_dim: int = 64
  ic_enc_dim: int = 64
  ci_enc_dim: int = 32
  con_dim: int = 32
  co_dim: int = 0
  dropout: float = 0.0
  clip: float = 5.0
  # Training penalties (read by `penalty` and by `train.train_step`).
  kl_ic_scale: float = 1e-4
  kl_co_scale: float = 1e-4
  l2_gen_scale: float = 1e-4
  cd_rate: float = 0.0
  warmup_steps: int = 100

  def latent_inputs(self) -> list[tuple[str, ...]]:
    """Paths of the kernels whose input axis is the factors (see `scale_latent_inputs`)."""
    return [("readout",)] + ([("decoder", "con_from_factors")] if self.co_dim else [])

  def penalty(self, params: Any, losses: dict[str, Any], step: jax.Array, elements: int
              ) -> jax.Array:
    """KL (mean over trials) and L2 terms per data element, weighted, with linear warm-up."""
    ramp = jnp.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))
    kl = (self.kl_ic_scale * jnp.mean(losses["kl_ic"][0])
          + self.kl_co_scale * jnp.mean(losses["kl_co"][0])) / elements
    return ramp * (kl + self.l2_gen_scale * lfads_l2(params))

  @nn.compact
  def __call__(self, x_BTN: jax.Array, latent_size: Any = None, sample: bool = False,
               train: bool = False):
    sample = sample or train
    b, t, _ = x_BTN.shape
    mask_K = latent_mask(self.latent, self.latent if latent_size is None else latent_size)
    drop = nn.Dropout(self.dropout, deterministic=not sample)
    x = drop(x_BTN)
    _, fwd = ScanGRU(self.ic_enc_dim, clip=self.clip, name="ic_enc_fwd")(x)
    _, bwd = ScanGRU(self.ic_enc_dim, reverse=True, clip=self.clip, name="ic_enc_bwd")(x)
    ic_mean, ic_logvar = jnp.split(Dense(2 * self.gen_dim, name="ic_posterior")(
        drop(jnp.concatenate([fwd, bwd], axis=-1))), 2, axis=-1)
    prior_mean = self.param("ic_prior_mean", nn.initializers.zeros_init(), (self.gen_dim,))
    prior_logvar = self.param("ic_prior_logvar", nn.initializers.constant(jnp.log(0.1)),
                              (self.gen_dim,))
    self.sow("losses", "kl_ic", _gaussian_kl(ic_mean, ic_logvar, prior_mean[None], prior_logvar[None]))
    g0 = _sample(self, ic_mean, ic_logvar, sample)  # no dropout: it would move the whole trajectory
    if self.co_dim:
      ci_f, _ = ScanGRU(self.ci_enc_dim, clip=self.clip, name="ci_enc_fwd")(x)
      ci_b, _ = ScanGRU(self.ci_enc_dim, reverse=True, clip=self.clip, name="ci_enc_bwd")(x)
      ci = drop(jnp.concatenate([ci_f, ci_b], axis=-1))
      gci_BTG = Dense(3 * self.con_dim, name="con_input")(ci)
    else:
      gci_BTG = jnp.zeros((b, t, 3), x.dtype)
    step = nn.scan(_LFADSStep, variable_broadcast="params",
                   split_rngs={"params": False, "sample": True, "dropout": True},
                   in_axes=(1, nn.broadcast),
                   out_axes=1)
    carry = (g0, jnp.zeros((b, self.con_dim), x.dtype), jnp.zeros((b, self.latent), x.dtype),
             jnp.zeros((b, max(self.co_dim, 1)), x.dtype))
    _, (f_BTK, kl_BT) = step(self.gen_dim, self.con_dim, self.co_dim, self.latent, self.clip,
                             sample, self.dropout, name="decoder")(carry, gci_BTG, mask_K)
    self.sow("losses", "kl_co", jnp.sum(kl_BT, axis=1))
    y_BTN = Dense(self.neurons, kernel_init=per_unit_init(0), name="readout")(f_BTK)
    return y_BTN, f_BTK


def lfads_l2(params: Any) -> jax.Array:
  """Sum of squares of the generator's and controller's recurrent kernels (the L2 penalty)."""
  dec = params["decoder"]
  total = jnp.sum(dec["generator"]["recurrent"]["kernel"] ** 2)
  if "controller" in dec:
    total += jnp.sum(dec["controller"]["recurrent"]["kernel"] ** 2)
  return total


def coordinated_dropout(key: jax.Array, x_BTN: jax.Array, rate: float
                        ) -> tuple[jax.Array, jax.Array]:
  """(input, loss mask): each element is kept with probability 1 - rate (and scaled by
  1 / (1 - rate)) in the input; the loss mask is 1 exactly where the input dropped it, so the
  model cannot learn to copy an element to its own output (Keshtkaran & Pandarinath 2019)."""
  keep = jax.random.bernoulli(key, 1.0 - rate, x_BTN.shape)
  return jnp.where(keep, x_BTN / (1.0 - rate), 0.0), (~keep).astype(x_BTN.dtype)
