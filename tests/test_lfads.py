"""models.LFADS on its own: a padded model equals an unpadded one, padded factor weights get no
gradient, its KL and dropout helpers, it fits Poisson trials better than the mean-rate null, and
the sweep recovers 3 factors on Lorenz trials."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nmas_jax import DimensionSweep, models
from nmas_jax.data import lorenz
from nmas_jax.models import lfads

SIZES = dict(gen_dim=8, ic_enc_dim=5, ci_enc_dim=4, con_dim=5)


def _cut(p, k, co_dim):
  """Params of a padded LFADS cut to factor width k (what an unpadded width-k model has)."""
  dec = dict(p["decoder"])
  dec["factors"] = {"kernel": p["decoder"]["factors"]["kernel"][:, :k]}
  if co_dim:
    dec["con_from_factors"] = {"kernel": p["decoder"]["con_from_factors"]["kernel"][:k]}
  return {
    **p,
    "decoder": dec,
    "readout": {"kernel": p["readout"]["kernel"][:k], "bias": p["readout"]["bias"]},
  }


@pytest.mark.parametrize("co_dim", [0, 2])
def test_padded_lfads_equals_unpadded_and_padded_weights_get_no_gradient(co_dim):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 12, 7))
  big = models.LFADS(neurons=7, latent=6, co_dim=co_dim, **SIZES, dropout=0.0)
  small = models.LFADS(neurons=7, latent=3, co_dim=co_dim, **SIZES, dropout=0.0)
  p = jax.jit(big.init)(jax.random.PRNGKey(1), x)["params"]  # jitted: compiles faster than eager
  y, f = jax.jit(big.apply)({"params": p}, x, 3)
  y3, f3 = jax.jit(small.apply)({"params": _cut(p, 3, co_dim)}, x)
  np.testing.assert_allclose(y, y3, atol=1e-6)
  np.testing.assert_allclose(f[..., :3], f3, atol=1e-6)
  assert not np.asarray(f[..., 3:]).any()
  if not co_dim:  # the sampled and gradient checks below cover the controller's path too
    return
  # Sampled, with the same keys: still equal (the padded units never enter the randomness).
  keys = {"sample": jax.random.PRNGKey(2), "dropout": jax.random.PRNGKey(3)}
  big_d, small_d = big.clone(dropout=0.3), small.clone(dropout=0.3)
  sampled = lambda m, *k: jax.jit(
    lambda p: m.apply({"params": p}, x, *k, sample=True, rngs=keys, mutable=["losses"])
  )
  (ys, _), kl = sampled(big_d, 3)(p)
  (ys3, _), kl3 = sampled(small_d)(_cut(p, 3, co_dim))
  np.testing.assert_allclose(ys, ys3, atol=1e-5)
  for name in ("kl_ic", "kl_co"):
    np.testing.assert_allclose(kl["losses"][name][0], kl3["losses"][name][0], rtol=1e-5, atol=1e-5)

  def loss(params):
    return jnp.sum(big.apply({"params": params}, x, 3)[0] ** 2)

  g = jax.jit(jax.grad(loss))(p)
  assert not np.asarray(g["decoder"]["factors"]["kernel"][:, 3:]).any()
  assert not np.asarray(g["readout"]["kernel"][3:]).any()
  assert np.asarray(g["decoder"]["factors"]["kernel"][:, :3]).any()


def test_kl_and_coordinated_dropout():
  m, lv = jnp.array([[0.3, -1.0]]), jnp.array([[0.2, -0.5]])
  assert float(lfads._gaussian_kl(m, lv, m, lv)[0]) == pytest.approx(0.0, abs=1e-7)
  # KL of two 1-D Gaussians by its textbook formula, summed over the two dimensions.
  pm, plv = jnp.zeros((1, 2)), jnp.log(jnp.full((1, 2), 0.1))
  s2, ps2 = np.exp(np.asarray(lv)), 0.1
  ref = np.sum(np.log(np.sqrt(ps2) / np.sqrt(s2)) + (s2 + np.asarray(m) ** 2) / (2 * ps2) - 0.5)
  assert float(lfads._gaussian_kl(m, lv, pm, plv)[0]) == pytest.approx(ref, rel=1e-5)
  x = jnp.arange(1.0, 201.0).reshape(2, 10, 10)
  x_in, loss_mask = models.coordinated_dropout(jax.random.PRNGKey(0), x, 0.25)
  kept = np.asarray(x_in) != 0
  np.testing.assert_array_equal(np.asarray(loss_mask), ~kept)
  np.testing.assert_allclose(np.asarray(x_in)[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert 0.15 < float(loss_mask.mean()) < 0.35


def test_lfads_fits_poisson_trials_better_than_the_mean_rate():
  # 40 trials of a damped 2-D rotation from random initial conditions, 10 Poisson neurons with an
  # exp link: after 300 Adam steps (model.penalty's KL and L2 in the loss) the deterministic
  # rates' NLL on the trials is below the null's (each neuron's mean rate) by at least 10%.
  rng = np.random.default_rng(0)
  th = 0.3
  a = 0.97 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
  z = np.zeros((40, 20, 2))
  z[:, 0] = rng.standard_normal((40, 2)) * 1.5
  for t in range(1, 20):
    z[:, t] = z[:, t - 1] @ a.T
  w = rng.standard_normal((2, 10)) * 0.8
  counts = rng.poisson(np.exp(z @ w + 0.5)).astype(np.float32)
  x = jnp.asarray(counts)
  # KL weight 0.1 and L2 weight 1e-4 per data element, at full weight from the first step.
  model = models.LFADS(
    neurons=10, latent=4, kl_ic_scale=0.1, l2_gen_scale=1e-4, warmup_steps=1, **SIZES, dropout=0.0
  )
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  tx = optax.adam(1e-2)
  opt = tx.init(params)

  def nll(log_rate, x):
    return jnp.mean(jnp.exp(log_rate) - x * log_rate)

  @jax.jit
  def step(params, opt, key):
    def loss(p):
      (y, _), aux = model.apply(
        {"params": p}, x, sample=True, rngs={"sample": key}, mutable=["losses"]
      )
      return nll(y, x) + model.penalty(p, aux["losses"], 0, x[0].size)

    grads = jax.grad(loss)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt

  for i in range(300):
    params, opt = step(params, opt, jax.random.PRNGKey(i))
  fit = float(nll(model.apply({"params": params}, x)[0], x))
  null = float(nll(jnp.log(jnp.broadcast_to(x.mean(axis=(0, 1)), x.shape)), x))
  assert fit < 0.9 * null, (fit, null)


def test_lfads_sweep_recovers_three_factors_on_lorenz_trials():
  # --model=lfads through the batched sweep (DimensionSweep, auto batching) on small Lorenz
  # trials (150 trials of 20 bins, 60 neurons; split by trial, a window is a trial; whitened, so
  # the rule on the true rates answers 3, see test_data): the rule chooses 3 factors; at 3 the
  # held-out neurons' test bits/spike are above 0 (better than each neuron's mean rate) and the
  # inferred rates explain most of the true rates' variance on the test trials (each neuron's
  # mean rate scores about 0), more than at 1 factor.
  ds = lorenz.make_lorenz_trials(trials=150, time=20, neurons=60)
  r = (
    DimensionSweep(
      model="lfads",
      latents=(1, 2, 3, 4, 6),
      seeds=1,
      steps=400,  # 3 factors on data seeds 0, 1, 2 (rates_r2 at 3: 0.80-0.87)
      co_dim=0,  # autonomous dynamics: no controller (3x faster)
      baselines=(),
      bootstrap=0,
      verbose=False,
    )
    .fit(ds)
    .results_
  )
  assert r["optimal_latent"]["0"] == 3, r["dimension"]["layers"]["0"]["gain_fraction"]
  at = {m["latent"]: m for m in r["models"]}
  assert at[3]["test_cosmooth_bps"] > 0, at[3]
  assert at[3]["test_rates_r2"] > max(0.6, at[1]["test_rates_r2"]), at
