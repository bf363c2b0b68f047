"""Train step: vmapped step equals per-model steps; models are independent; divergence is
isolated."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import models
from nmas_jax.training import train

B, T, N, H, K = 4, 6, 5, 8, 6
LATENTS = (1, 3, 6)
LRS = (1e-2, 3e-3, 1e-3)
WDS = (0.0, 1e-2, 1e-1)


def _setup(lrs=LRS):
  model = models.LSTMAutoencoder(N, K, H, decoder="lstm", bidirectional=False, dropout=0.0)
  tx = train.make_optimizer(clip_norm=1.0)
  init = functools.partial(train.init_state, model=model, tx=tx, example_x_BTN=jnp.zeros((1, T, N)))
  keys = jax.random.split(jax.random.PRNGKey(0), len(LATENTS))
  state = train.with_hyperparams(
    jax.vmap(init)(keys, jnp.array(LATENTS)),
    learning_rate=jnp.array(lrs, jnp.float32),
    weight_decay=jnp.array(WDS, jnp.float32),
  )
  x = jax.random.normal(jax.random.PRNGKey(1), (len(LATENTS), B, T, N))
  step = functools.partial(train.train_step, model=model, tx=tx)
  return state, x, lambda s, x: step(s, {"x": x})


def _index(tree, i):
  return jax.tree.map(lambda a: a[i], tree)


def test_vmapped_step_equals_per_model_steps():
  state, x, step = _setup()
  batched = jax.jit(jax.vmap(step))
  single = jax.jit(step)
  s_b = state
  s_1 = [_index(state, i) for i in range(len(LATENTS))]
  for _ in range(3):
    s_b, m_b = batched(s_b, x)
    outs = [single(s, x[i]) for i, s in enumerate(s_1)]
    s_1 = [o[0] for o in outs]
    for i, (_, m) in enumerate(outs):
      np.testing.assert_allclose(m_b["train/loss"][i], m["train/loss"], rtol=1e-5)
  for i in range(len(LATENTS)):
    for a, b in zip(jax.tree.leaves(_index(s_b.params, i)), jax.tree.leaves(s_1[i].params)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_each_model_keeps_its_own_hyperparameters():
  state, _, _ = _setup()
  hp = state.opt_state[1].hyperparams
  np.testing.assert_allclose(hp["learning_rate"], LRS)
  np.testing.assert_allclose(hp["weight_decay"], WDS)
  np.testing.assert_array_equal(state.latent, LATENTS)


def test_one_models_gradient_ignores_other_models():
  state, x, step = _setup()
  batched = jax.jit(jax.vmap(step))
  out_a, _ = batched(state, x)
  x_b = x.at[1:].set(x[1:] * 3.0 + 1.0)
  out_b, _ = batched(state, x_b)
  for a, b in zip(
    jax.tree.leaves(_index(out_a.params, 0)), jax.tree.leaves(_index(out_b.params, 0))
  ):
    np.testing.assert_array_equal(a, b)


def test_step_changes_every_used_parameter():
  state, x, step = _setup()
  new, _ = jax.jit(jax.vmap(step))(state, x)
  i = len(LATENTS) - 1  # the full-width model uses every weight
  for a, b in zip(jax.tree.leaves(_index(state.params, i)), jax.tree.leaves(_index(new.params, i))):
    assert not np.allclose(a, b)


def test_diverging_model_is_frozen_and_others_unaffected():
  state, x, step = _setup()
  batched = jax.jit(jax.vmap(step))
  ref = state
  bad = state
  x_bad = x.at[1, 0, 0, 0].set(jnp.nan)
  for _ in range(3):
    ref, _ = batched(ref, x)
    bad, _ = batched(bad, x_bad)
  np.testing.assert_array_equal(bad.diverged_at, [-1, 0, -1])
  for i in (0, 2):
    for a, b in zip(jax.tree.leaves(_index(ref, i)), jax.tree.leaves(_index(bad, i))):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(_index(state.params, 1)), jax.tree.leaves(_index(bad.params, 1))):
    np.testing.assert_array_equal(a, b)


def test_poisson_loss_matches_hand_computation():
  """The readout is the log-rate (exp link, as LFADS and NLB): NLL = exp(y) - x y."""
  y = jnp.array([[[0.0, 1.0, -2.0]]])
  x = jnp.array([[[2.0, 0.0, 1.0]]])
  rate = np.exp([0.0, 1.0, -2.0])
  expected = np.mean(rate - np.array([2.0, 0.0, 1.0]) * np.log(rate))
  np.testing.assert_allclose(models.reconstruction_loss(y, x, "poisson"), expected, rtol=1e-6)
  np.testing.assert_allclose(models.mean_prediction(y, "poisson"), rate[None, None], rtol=1e-6)
  huge = models.mean_prediction(jnp.array([1e3]), "poisson")  # clipped: finite
  assert np.isfinite(huge).all()
  np.testing.assert_allclose(huge, np.exp(models.MAX_LOG_RATE), rtol=1e-6)


def test_encoder_never_sees_held_out_neurons():
  model = models.LSTMAutoencoder(N, K, H, decoder="lstm", bidirectional=False, dropout=0.0)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, T, N)))["params"]
  x = jax.random.normal(jax.random.PRNGKey(1), (B, T, N))
  mask = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])

  def loss_of_input(x_in):
    # Targets fixed; only the encoder's input varies.
    y, _ = model.apply({"params": params}, train.encoder_input(x_in, mask), 3)
    return models.reconstruction_loss(y, x)

  g = jax.grad(loss_of_input)(x)
  assert np.all(np.asarray(g[..., 1]) == 0) and np.all(np.asarray(g[..., 4]) == 0)
  assert np.any(np.asarray(g[..., 0]) != 0)


def test_step_at_own_latent_width_equals_masked_padded_step():
  """train_step(latent_width=k) on the state cut to width k (`models.cut_to`) equals the padded,
  masked step cut to width k: same loss, gradient norm, params and optimiser state, within
  rtol 1e-4 (two different compiled programs; two steps of AdamW amplify rounding)."""
  state, x, step = _setup()
  model = models.LSTMAutoencoder(N, K, H, decoder="lstm", bidirectional=False, dropout=0.0)
  tx = train.make_optimizer(clip_norm=1.0)
  padded_step = jax.jit(step)
  for i, k in enumerate(LATENTS):
    s_pad = _index(state, i)
    init_k = functools.partial(
      train.init_state, model=model.clone(latent=k), tx=tx, example_x_BTN=jnp.zeros((1, T, N))
    )
    like = jax.eval_shape(init_k, jax.random.PRNGKey(0), k)
    s_cut = models.cut_to(s_pad, like)
    cut_step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, latent_width=k))
    for _ in range(2):
      s_pad, m_pad = padded_step(s_pad, x[i])
      s_cut, m_cut = cut_step(s_cut, {"x": x[i]})
      np.testing.assert_allclose(m_cut["train/loss"], m_pad["train/loss"], rtol=1e-5)
      np.testing.assert_allclose(m_cut["grads/norm"], m_pad["grads/norm"], rtol=1e-5)
    for a, b in zip(
      jax.tree.leaves((s_cut.params, s_cut.opt_state)),
      jax.tree.leaves(
        models.cut_to((s_pad.params, s_pad.opt_state), (like.params, like.opt_state))
      ),
    ):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_coordinated_dropout_scores_input_neurons_only_where_hidden():
  x = jax.random.normal(jax.random.PRNGKey(2), (B, T, N)) + 3.0  # no exact zeros
  mask = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])  # neurons 1 and 4 held out
  loss_mask = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0])  # neuron 3 outside the model's subset
  rngs = {"sample": jax.random.PRNGKey(3)}
  x_in, w = train.coordinated_dropout_weights(
    {"x": x, "input_mask": mask, "loss_mask": loss_mask}, train.encoder_input(x, mask), 0.5, rngs
  )
  x_in, w, x = np.asarray(x_in), np.asarray(w), np.asarray(x)
  hidden = x_in[..., [0, 2, 3]] == 0
  assert 0.2 < hidden.mean() < 0.8
  np.testing.assert_array_equal(w[..., [0, 2]], hidden[..., :2])  # scored exactly where hidden
  np.testing.assert_allclose(
    x_in[..., [0, 2, 3]][~hidden], 2 * x[..., [0, 2, 3]][~hidden], rtol=1e-6
  )  # kept inputs rescaled by 1 / (1 - rate)
  assert np.all(w[..., [1, 4]] == 1) and np.all(w[..., 3] == 0) and np.all(x_in[..., [1, 4]] == 0)


def test_autoencoder_step_with_coordinated_dropout_is_the_weighted_loss():
  model = models.LSTMAutoencoder(
    N, K, H, decoder="linear", cd_rate=0.4, bidirectional=False, dropout=0.0
  )
  tx = train.make_optimizer(1e-2, clip_norm=1.0)
  state = train.init_state(
    jax.random.PRNGKey(0), 3, model=model, tx=tx, example_x_BTN=jnp.zeros((1, T, N))
  )
  x = jax.random.normal(jax.random.PRNGKey(1), (B, T, N))
  mask = jnp.array([1.0, 0.0, 1.0, 1.0, 0.0])
  batch = {"x": x, "input_mask": mask}
  _, metrics = train.train_step(state, batch, model=model, tx=tx)
  rngs = train.step_rngs(state)
  x_in, w = train.coordinated_dropout_weights(batch, train.encoder_input(x, mask), 0.4, rngs)
  y, _ = model.apply({"params": state.params}, x_in, 3, train=True, rngs=rngs)
  expected = np.sum((np.asarray(y) - np.asarray(x)) ** 2 * np.asarray(w)) / np.sum(np.asarray(w))
  np.testing.assert_allclose(metrics["train/loss"], expected, rtol=1e-5)


def test_lr_half_life_scales_each_update_by_half_per_half_life():
  # The same gradients through the constant-rate optimizer and one with lr_half_life=4: update t
  # of the second is 0.5 ** (t / 4) times update t of the first.
  params = {"w": jnp.ones((3, 2))}
  const, decayed = train.make_optimizer(1e-2), train.make_optimizer(1e-2, lr_half_life=4)
  s_c, s_d = const.init(params), decayed.init(params)
  for t in range(9):
    g = {"w": jax.random.normal(jax.random.PRNGKey(t), (3, 2))}
    u_c, s_c = const.update(g, s_c, params)
    u_d, s_d = decayed.update(g, s_d, params)
    np.testing.assert_allclose(u_d["w"], 0.5 ** (t / 4) * u_c["w"], rtol=1e-5)
