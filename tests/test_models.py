"""LSTM autoencoder: masked latent width equals an unpadded model; reference LSTM; embedding."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nmas_jax import models
from nmas_jax.training import train

B, T, N, H, K = 3, 7, 6, 5, 8


def _x(seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (B, T, N))


def _slice_params(params, k, bidirectional):
  """The unpadded model of width k: the first k latent units of the padded model."""
  p = jax.tree.map(lambda a: a, params)
  lat = p["encoder"]["to_latent"]
  lat["kernel"], lat["bias"] = lat["kernel"][:, :k], lat["bias"][:k]
  if "skip" in p["encoder"]:
    p["encoder"]["skip"]["kernel"] = p["encoder"]["skip"]["kernel"][:, :k]
  dec = p["decoder_net"]
  first = (
    dec["lstm"]["input"]
    if "lstm" in dec
    else dec["mlp_hidden"]
    if "mlp_hidden" in dec
    else dec["readout"]
  )
  first["kernel"] = first["kernel"][:k]
  return p


def _loss(model, params, x, k=None):
  y, _ = model.apply({"params": params}, x, k)
  return models.reconstruction_loss(y, x)


@pytest.mark.parametrize("decoder", ["lstm", "linear", "mlp"])
@pytest.mark.parametrize(
  "bidirectional,linear_skip", [(False, False), (True, False), (False, True)]
)
@pytest.mark.parametrize("k", [1, 3, 7])
def test_padded_model_equals_unpadded(decoder, bidirectional, linear_skip, k):
  padded = models.LSTMAutoencoder(
    N, K, H, decoder=decoder, bidirectional=bidirectional, linear_skip=linear_skip, dropout=0.0
  )
  small = models.LSTMAutoencoder(
    N, k, H, decoder=decoder, bidirectional=bidirectional, linear_skip=linear_skip, dropout=0.0
  )
  x = _x()
  params = padded.init(jax.random.PRNGKey(1), x)["params"]
  small_params = _slice_params(params, k, bidirectional)

  y_pad, z_pad = padded.apply({"params": params}, x, k)
  y_small, z_small = small.apply({"params": small_params}, x)
  np.testing.assert_allclose(y_pad, y_small, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(z_pad[..., :k], z_small, rtol=1e-6, atol=1e-6)
  assert np.all(np.asarray(z_pad[..., k:]) == 0)

  loss_pad, g_pad = jax.value_and_grad(lambda p: _loss(padded, p, x, k))(params)
  loss_small, g_small = jax.value_and_grad(lambda p: _loss(small, p, x))(small_params)
  np.testing.assert_allclose(loss_pad, loss_small, rtol=1e-6)
  # Gradients on the weights the small model has are equal ...
  g_used = _slice_params(g_pad, k, bidirectional)
  for a, b in zip(jax.tree.leaves(g_used), jax.tree.leaves(g_small)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # ... and the padded weights get exactly zero gradient.
  lat = g_pad["encoder"]["to_latent"]
  assert np.all(np.asarray(lat["kernel"][:, k:]) == 0) and np.all(np.asarray(lat["bias"][k:]) == 0)
  if linear_skip:
    assert np.all(np.asarray(g_pad["encoder"]["skip"]["kernel"][:, k:]) == 0)
  dec = g_pad["decoder_net"]
  first = (
    dec["lstm"]["input"]
    if decoder == "lstm"
    else dec["mlp_hidden" if decoder == "mlp" else "readout"]
  )
  assert np.all(np.asarray(first["kernel"][k:]) == 0)


def _numpy_lstm(x_BTD, w_in, b_in, w_h, reverse=False):
  """Textbook LSTM (gates i, f, g, o), one step at a time in float64."""
  x_BTD, w_in, b_in, w_h = (np.asarray(a, np.float64) for a in (x_BTD, w_in, b_in, w_h))
  b, t, _ = x_BTD.shape
  hid = w_h.shape[0]
  h, c = np.zeros((b, hid)), np.zeros((b, hid))
  sig = lambda v: 1 / (1 + np.exp(-v))
  out = np.zeros((b, t, hid))
  for s in reversed(range(t)) if reverse else range(t):
    g = x_BTD[:, s] @ w_in + b_in + h @ w_h
    i, f, gg, o = np.split(g, 4, axis=-1)
    c = sig(f) * c + sig(i) * np.tanh(gg)
    h = sig(o) * np.tanh(c)
    out[:, s] = h
  return out


@pytest.mark.parametrize("reverse", [False, True])
def test_scan_lstm_matches_reference_loop(reverse):
  lstm = models.ScanLSTM(H, reverse=reverse)
  x = _x(2)
  params = lstm.init(jax.random.PRNGKey(0), x)["params"]
  h = lstm.apply({"params": params}, x)
  ref = _numpy_lstm(
    x,
    params["input"]["kernel"],
    params["input"]["bias"],
    params["recurrence"]["hidden"]["kernel"],
    reverse,
  )
  assert h.shape == (B, T, H)
  np.testing.assert_allclose(h, ref, rtol=1e-5, atol=1e-6)


def test_encoder_is_causal():
  enc = models.Encoder(hidden=H, latent=K, bidirectional=False)
  x = _x()
  params = enc.init(jax.random.PRNGKey(0), x)
  x2 = x.at[:, 4:].set(100.0)
  np.testing.assert_array_equal(enc.apply(params, x)[:, :4], enc.apply(params, x2)[:, :4])


def test_shapes_and_unroll_invariance():
  for unroll in (1, 4):
    model = models.LSTMAutoencoder(
      N, K, H, unroll=unroll, decoder="lstm", bidirectional=False, dropout=0.0
    )
    (y, z), params = model.init_with_output(jax.random.PRNGKey(0), _x())
    assert y.shape == (B, T, N) and z.shape == (B, T, K)
    if unroll == 1:
      ref = y
    else:
      np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


class _BehaviourDecoder(nn.Module):
  """A user model: our encoder inside, a linear readout of a behavioural variable."""

  @nn.compact
  def __call__(self, x_BTN):
    z_BTK = models.Encoder(hidden=H, latent=4, bidirectional=False, name="encoder")(x_BTN)
    return nn.Dense(1)(z_BTK)[..., 0]


def test_encoder_embeds_in_another_module_and_jits():
  m = _BehaviourDecoder()
  x = _x()
  params = m.init(jax.random.PRNGKey(0), x)
  out = jax.jit(m.apply)(params, x)
  assert out.shape == (B, T)
  np.testing.assert_allclose(out, m.apply(params, x), rtol=1e-6, atol=1e-6)
  # Its encoder weights are exactly an autoencoder's encoder weights.
  ae = models.LSTMAutoencoder(N, 4, H, decoder="lstm", bidirectional=False, dropout=0.0)
  ae_params = ae.init(jax.random.PRNGKey(3), x)["params"]
  assert jax.tree.structure(ae_params["encoder"]) == jax.tree.structure(params["params"]["encoder"])


def test_bad_decoder_is_rejected():
  with pytest.raises(ValueError, match="unknown decoder 'gru'"):
    models.LSTMAutoencoder(N, K, H, decoder="gru", bidirectional=False, dropout=0.0).init(
      jax.random.PRNGKey(0), _x()
    )


def test_bfloat16_matmuls_track_float32():
  """bf16 matmuls with f32 state: outputs within 3% (relative RMS) of the f32 model, same params."""
  x = jax.random.normal(jax.random.PRNGKey(5), (4, 20, N))
  f32 = models.LSTMAutoencoder(N, K, 16, decoder="lstm", bidirectional=False, dropout=0.0)
  bf16 = models.LSTMAutoencoder(
    N, K, 16, decoder="lstm", dtype=jnp.bfloat16, bidirectional=False, dropout=0.0
  )
  params = f32.init(jax.random.PRNGKey(0), x)
  y32, z32 = f32.apply(params, x, 5)
  y16, z16 = bf16.apply(params, x, 5)
  assert y16.dtype == jnp.float32 and z16.dtype == jnp.float32  # state and outputs stay f32
  rel = lambda a, b: float(jnp.sqrt(jnp.mean((a - b) ** 2) / jnp.mean(b**2)))
  assert rel(y16, y32) < 0.03 and rel(z16[..., :5], z32[..., :5]) < 0.03
  assert np.all(np.asarray(z16[..., 5:]) == 0)


@pytest.mark.parametrize("dtype", [None, jnp.bfloat16])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_equals_flax_dense(dtype, use_bias):
  """models.Dense is nn.Dense with a hand-written kernel gradient: same params, outputs, grads."""
  ours = models.Dense(4, use_bias=use_bias, dtype=dtype)
  flax_dense = nn.Dense(4, use_bias=use_bias, dtype=dtype)
  x = _x(6)
  params = ours.init(jax.random.PRNGKey(2), x)
  ref_params = flax_dense.init(jax.random.PRNGKey(2), x)
  assert jax.tree.structure(params) == jax.tree.structure(ref_params)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_array_equal(a, b)
  y, y_ref = ours.apply(params, x), flax_dense.apply(params, x)
  assert y.shape == (B, T, 4) and y.dtype == y_ref.dtype
  np.testing.assert_allclose(
    np.asarray(y, np.float32), np.asarray(y_ref, np.float32), rtol=1e-6, atol=1e-6
  )
  w = jax.random.normal(jax.random.PRNGKey(7), (B, T, 4))
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x).astype(jnp.float32)) * w)
  g, g_ref = (jax.grad(loss(m), argnums=(0, 1))(params, x) for m in (ours, flax_dense))
  tol = 1e-5 if dtype is None else 2e-2
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    assert a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("reverse", [False, True])
def test_hand_written_lstm_gradient_equals_autodiff(reverse):
  """The custom backward pass of ScanLSTM gives autodiff's gradients (params and input)."""
  fast = models.ScanLSTM(H, reverse=reverse)
  slow = models.ScanLSTM(H, reverse=reverse, custom_grad=False)
  x = _x(3)
  params = fast.init(jax.random.PRNGKey(0), x)
  w = jax.random.normal(jax.random.PRNGKey(4), (B, T, H))
  loss = lambda m: lambda p, x: jnp.sum(jnp.tanh(m.apply(p, x)) * w)
  g_fast = jax.grad(loss(fast), argnums=(0, 1))(params, x)
  g_slow = jax.grad(loss(slow), argnums=(0, 1))(params, x)
  assert jax.tree.structure(g_fast) == jax.tree.structure(g_slow)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_slow)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(fast.apply(params, x), slow.apply(params, x))


def test_hand_written_lstm_gradient_in_bfloat16_tracks_float32():
  x = _x(5)
  f32 = models.ScanLSTM(H)
  bf16 = models.ScanLSTM(H, dtype=jnp.bfloat16)
  params = f32.init(jax.random.PRNGKey(0), x)
  loss = lambda m: lambda p: jnp.mean(m.apply(p, x) ** 2)
  g32, g16 = jax.grad(loss(f32))(params), jax.grad(loss(bf16))(params)
  for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16)):
    assert b.dtype == jnp.float32
    np.testing.assert_allclose(b, a, atol=0.05 * float(jnp.max(jnp.abs(a))) + 1e-6)


@pytest.mark.parametrize("decoder", ["lstm", "linear", "mlp"])
@pytest.mark.parametrize("bidirectional,linear_skip", [(False, False), (True, True)])
def test_cut_latent_cuts_the_weights_a_small_model_uses(decoder, bidirectional, linear_skip):
  padded = models.LSTMAutoencoder(
    N, K, H, decoder=decoder, bidirectional=bidirectional, linear_skip=linear_skip, dropout=0.0
  )
  params = padded.init(jax.random.PRNGKey(1), _x())["params"]
  cut = models.cut_latent(padded, params, 3)
  expected = _slice_params(params, 3, bidirectional)
  assert jax.tree.structure(cut) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(cut), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(a, b)
  # The original (padded) params are left as they were.
  assert params["encoder"]["to_latent"]["kernel"].shape[-1] == K


def test_narrow_neurons_equals_the_masked_full_model_on_its_neurons():
  """A model cut to the neurons it reads and predicts gives the full model's outputs on those
  neurons when the full model's other inputs are zero; autodiff through the cut leaves zero
  gradient on the input rows of the other neurons. (Its steps against the masked full-width
  step: tests/test_sweep.py.)"""
  m = models.LSTMAutoencoder(
    neurons=9,
    latent=3,
    hidden=5,
    decoder="linear",
    bidirectional=True,
    linear_skip=True,
    dropout=0.0,
  )
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 9))
  params = m.init(jax.random.PRNGKey(0), x)["params"]
  in_i, out_i = jnp.array([1, 4, 7]), jnp.array([0, 1, 4, 7, 8])
  masked = x * jnp.zeros(9).at[in_i].set(1.0)[None, None, :]
  y_full, _ = m.apply({"params": params}, masked)
  cut = m.clone(neurons=5)
  y_cut, _ = cut.apply({"params": models.narrow_neurons(params, in_i, out_i)}, x[..., in_i])
  np.testing.assert_allclose(y_cut, y_full[..., out_i], rtol=1e-5, atol=1e-6)

  g_cut = jax.grad(
    lambda p: jnp.sum(
      cut.apply({"params": models.narrow_neurons(p, in_i, out_i)}, x[..., in_i])[0] ** 2
    )
  )(params)
  enc = g_cut["encoder"]
  for kernel in (
    enc["forward"]["input"]["kernel"],
    enc["backward"]["input"]["kernel"],
    enc["skip"]["kernel"],
  ):
    kernel = np.asarray(kernel)
    assert kernel[np.asarray(in_i)].any() and not np.delete(kernel, np.asarray(in_i), axis=0).any()
  readout = np.asarray(g_cut["decoder_net"]["readout"]["kernel"])
  assert not np.delete(readout, np.asarray(out_i), axis=1).any()


def _init(model, latent, x):
  st = train.init_state(
    jax.random.PRNGKey(3),
    latent,
    model=model,
    tx=train.make_optimizer(clip_norm=1.0),
    example_x_BTN=x,
  )
  return st.params


@pytest.mark.parametrize("decoder", ["lstm", "linear", "mlp"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_a_padded_model_starts_as_the_unpadded_model_whatever_the_padding(decoder, bidirectional):
  """A model of latent size 3 initialised at padded width 8 or 12 has, on the units it uses
  (`cut_latent`), exactly the initial weights of an unpadded width-3 model from the same key:
  adding a larger latent to the grid changes no model's start."""
  x = _x()
  small = _init(
    models.LSTMAutoencoder(N, 3, H, decoder=decoder, bidirectional=bidirectional, dropout=0.0), 3, x
  )
  for width in (8, 12):
    padded = _init(
      models.LSTMAutoencoder(
        N, width, H, decoder=decoder, bidirectional=bidirectional, dropout=0.0
      ),
      3,
      x,
    )
    cut = models.cut_latent(
      models.LSTMAutoencoder(N, width, H, decoder=decoder, bidirectional=bidirectional), padded, 3
    )
    assert jax.tree.structure(cut) == jax.tree.structure(small)
    for a, b in zip(jax.tree.leaves(cut), jax.tree.leaves(small)):
      np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("k", [2, 8])
def test_latent_facing_kernels_have_lecun_scale_of_the_unpadded_width(k):
  """The readout that reads the latent has variance 1 / k (lecun, fan_in k) for a model of
  latent size k, whatever the padded width; the encoder's latent kernel 1 / H (fan_in H)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 4000))
  params = _init(
    models.LSTMAutoencoder(4000, 16, H, decoder="linear", bidirectional=False, dropout=0.0), k, x
  )
  readout = np.asarray(params["decoder_net"]["readout"]["kernel"][:k])
  np.testing.assert_allclose(readout.std(), 1 / np.sqrt(k), rtol=0.05)
  to_latent = np.asarray(params["encoder"]["to_latent"]["kernel"])
  np.testing.assert_allclose(to_latent.std(), 1 / np.sqrt(H), rtol=0.15)


def test_lfads_and_multiscale_start_the_same_whatever_the_padding():
  """LFADS (with and without a controller) and the multiscale model give the same initial
  outputs for a latent size at two padded widths: their factor / band units are drawn per unit
  and scaled for the size used."""
  x = _x()

  def out(model, k):
    return model.apply({"params": _init(model, k, x)}, x, latent_size=k)[0]

  for co_dim in (0, 2):
    lfads = functools.partial(
      models.LFADS, neurons=N, gen_dim=8, ic_enc_dim=6, ci_enc_dim=4, con_dim=4, co_dim=co_dim
    )
    # Two different compiled programs (widths 12 and 4): equal up to float rounding, which
    # depends on the CPU's instruction set (3e-8 apart on one VM), so within rtol 1e-5.
    np.testing.assert_allclose(
      out(lfads(latent=12), 4), out(lfads(latent=4), 4), rtol=1e-5, atol=1e-6
    )
  for decoder in ("linear", "mlp"):
    ms = functools.partial(
      models.MultiscaleAutoencoder, neurons=N, hidden=H, decoder=decoder, decoder_hidden=5
    )
    np.testing.assert_allclose(
      out(ms(latent=6), jnp.array([2, 3])), out(ms(latent=3), jnp.array([2, 3])), rtol=0, atol=1e-6
    )
