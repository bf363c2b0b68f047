"""The LSTM over time (`ScanLSTM`): input projection hoisted out of `nn.scan`, hand-written
backward."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from nmas_jax.models.layers import Dense


def _gate_bias_init(key, shape, dtype=jnp.float32):
  """Zero biases except forget gates at +1, so memory is kept early in training."""
  del key
  hidden = shape[-1] // 4
  return jnp.zeros(shape, dtype).at[hidden : 2 * hidden].set(1.0)


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
    g_BG = gx_BG + nn.Dense(4 * self.hidden, use_bias=False, dtype=self.dtype, name="hidden")(
      h_BH
    ).astype(jnp.float32)
    scale_G, shift_G = _gate_affine(self.hidden)
    scale_BG, shift_BG = scale_G[None, :], shift_G[None, :]
    act_BG = jnp.tanh(g_BG * scale_BG) * scale_BG + shift_BG  # sigmoid i, f, o; tanh g
    i, f, g, o = jnp.split(act_BG, 4, axis=-1)
    c_BH = f * c_BH + i * g
    h_BH = o * jnp.tanh(c_BH)
    # One stacked output [B, 6H] instead of three: one in-place update per step, and one
    # zero-initialised output buffer to copy per scan (docs/notes/2026-11-28-benchmarks.md).
    return (h_BH, c_BH), jnp.concatenate([h_BH, c_BH, act_BG], axis=-1)


def _recurrence_backward(
  w_HG: jax.Array,
  h_TBH: jax.Array,
  c_TBH: jax.Array,
  act_TBG: jax.Array,
  dh_TBH: jax.Array,
  dtype: Any,
  unroll: int = 1,
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
  factor_TBG = jnp.concatenate(
    [g * i * (1.0 - i), c_prev_TBH * f * (1.0 - f), i * (1.0 - g * g), tc * o * (1.0 - o)], axis=-1
  )
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
  _, dpre_TBG = jax.lax.scan(
    step, (zeros_BH, zeros_BH), (dh_TBH, dc_from_dh_TBH, factor_TBG, f), reverse=True, unroll=unroll
  )
  dw_HG = jnp.einsum(
    "tbh,tbg->hg",
    h_prev_TBH.astype(dtype),
    dpre_TBG.astype(dtype),
    preferred_element_type=jnp.float32,
  )
  return dw_HG, dpre_TBG


def _run_recurrence(mdl, gx_TBG):
  zeros_BH = jnp.zeros((gx_TBG.shape[1], mdl.hidden), jnp.float32)
  _, out_TBF = mdl((zeros_BH, zeros_BH), gx_TBG)  # F = 6H: h, c, gates
  hidden = mdl.hidden
  return out_TBF[..., :hidden], out_TBF[..., hidden : 2 * hidden], out_TBF[..., 2 * hidden :]


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
    gx_TBG = Dense(
      4 * self.hidden,
      dtype=self.dtype,
      bias_init=_gate_bias_init,
      kernel_init=self.input_init,
      name="input",
    )(jnp.swapaxes(x_BTD, 0, 1)).astype(jnp.float32)
    if self.reverse:
      gx_TBG = gx_TBG[::-1]
    scan = nn.scan(
      _Recurrence,
      variable_broadcast="params",
      split_rngs={"params": False},
      in_axes=0,
      out_axes=0,
      unroll=self.unroll,
    )
    cell = scan(self.hidden, self.dtype, name="recurrence")
    if self.custom_grad:
      h_TBH = nn.custom_vjp(
        _recurrence_fn,
        forward_fn=_recurrence_fwd,
        backward_fn=functools.partial(_recurrence_bwd, dtype=self.dtype, unroll=self.unroll),
      )(cell, gx_TBG)
    else:
      h_TBH = _recurrence_fn(cell, gx_TBG)
    if self.reverse:
      h_TBH = h_TBH[::-1]
    return jnp.swapaxes(h_TBH, 0, 1)
