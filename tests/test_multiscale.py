"""--model=multiscale: leaky-integrator bands, padding, the band rule, and a known answer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nmas_jax import config, models
from nmas_jax.data import splits, synthetic
from nmas_jax.errors import UserError
from nmas_jax.evaluation import dimension, evaluate
from nmas_jax.training import sweep


def test_leaky_integration_matches_a_loop_and_a_slow_unit_moves_slowly():
  rng = np.random.default_rng(0)
  u = rng.uniform(-1, 1, (2, 40, 3)).astype(np.float32)
  a = np.exp(-1.0 / np.array([1.0, 5.0, 50.0], np.float32))
  z = np.asarray(models.leaky_integrate(jnp.asarray(u), jnp.asarray(a)))
  ref = np.empty_like(u)
  ref[:, 0] = u[:, 0]
  for t in range(1, 40):
    ref[:, t] = a * ref[:, t - 1] + (1 - a) * u[:, t]
  np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-6)
  # Innovations in [-1, 1]: a unit with time constant tau moves at most 2 (1 - a) per bin.
  assert np.all(np.abs(np.diff(z, axis=1)) <= 2 * (1 - a) + 1e-6)


def _follow_loop(v_BTK: np.ndarray, a_K: np.ndarray) -> np.ndarray:
  """models.bounded_follow's recurrence written out as a loop."""
  z = np.empty_like(v_BTK)
  z[:, 0] = np.tanh(v_BTK[:, 0])
  for t in range(1, v_BTK.shape[1]):
    z[:, t] = a_K * z[:, t - 1] + (1 - a_K) * np.tanh((v_BTK[:, t] - a_K * z[:, t - 1]) / (1 - a_K))
  return z


def test_band_units_follow_the_encoder_with_bounded_innovations():
  a = np.exp(-1.0 / np.array([2.0, 50.0], np.float32))
  rng = np.random.default_rng(1)
  v = rng.standard_normal((2, 60, 2)).astype(np.float32)
  z = np.asarray(models.bounded_follow(jnp.asarray(v), jnp.asarray(a)))
  np.testing.assert_allclose(z, _follow_loop(v, a), rtol=1e-4, atol=1e-5)
  # It is a leaky integrator (leaky_integrate) of innovations in [-1, 1].
  u = np.concatenate([z[:, :1], (z[:, 1:] - a * z[:, :-1]) / (1 - a)], axis=1)
  assert np.abs(u).max() <= 1 + 1e-4
  np.testing.assert_allclose(
    models.leaky_integrate(jnp.asarray(u), jnp.asarray(a)), z, rtol=1e-4, atol=1e-5
  )
  # A slow proposal (period 400 bins) is followed by both bands; one that alternates sign every
  # bin moves the slow unit (tau 50) by at most 2 (1 - a) = 0.04 per bin.
  t = np.arange(400)
  slow = np.repeat(0.5 * np.sin(2 * np.pi * t / 400)[None, :, None], 2, axis=2).astype(np.float32)
  z_slow = np.asarray(models.bounded_follow(jnp.asarray(slow), jnp.asarray(a)))
  assert np.abs(z_slow - slow).max() < 0.02
  fast = np.repeat((0.5 * (-1.0) ** t)[None, :, None], 2, axis=2).astype(np.float32)
  z_fast = np.asarray(models.bounded_follow(jnp.asarray(fast), jnp.asarray(a)))
  assert np.abs(np.diff(z_fast[0, :, 1])).max() <= 2 * (1 - a[1]) + 1e-6
  assert np.abs(z_fast[0, 100:, 1]).max() < 0.1 < np.abs(z_fast[0, 100:, 0]).max()
  # A model's band output is that follower of its encoder's proposals.
  model = models.MultiscaleAutoencoder(
    neurons=3, latent=1, timescales=(1, 50), hidden=4, bidirectional=False, dropout=0.0
  )
  x = jnp.asarray(rng.standard_normal((2, 40, 3)), jnp.float32)
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  z_model = model.apply({"params": params}, x, method=model.encode)
  h = np.asarray(model.apply({"params": params}, x, method=lambda m, x: m.encoder(x)))
  a2 = np.exp(-1.0 / np.array([1.0, 50.0], np.float32))
  np.testing.assert_allclose(z_model, _follow_loop(h, a2), rtol=1e-4, atol=1e-5)


def test_padded_multiscale_model_equals_unpadded():
  # Bands of padded width 5 masked to counts (3, 2) against a model of width 3 per band masked
  # to the same counts, with the used encoder columns and decoder rows copied: equal outputs;
  # unused units are zero.
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 6))
  padded = models.MultiscaleAutoencoder(
    neurons=6, latent=5, timescales=(2, 20), hidden=4, bidirectional=False, dropout=0.0
  )
  small = models.MultiscaleAutoencoder(
    neurons=6, latent=3, timescales=(2, 20), hidden=4, bidirectional=False, dropout=0.0
  )
  params = padded.init(jax.random.PRNGKey(1), x)["params"]
  used = np.r_[0:3, 5:8]  # band 0's units 0-2, band 1's units 0-2 of the padded layout
  sp = jax.tree.map(lambda a: a, params)
  enc = sp["encoder"]["to_latent"]
  enc["kernel"], enc["bias"] = enc["kernel"][:, used], enc["bias"][used]
  sp["decoder_net"]["readout"]["kernel"] = sp["decoder_net"]["readout"]["kernel"][used]
  y_pad, z_pad = padded.apply({"params": params}, x, jnp.array([3, 2]))
  y_small, z_small = small.apply({"params": sp}, x, jnp.array([3, 2]))
  np.testing.assert_allclose(y_pad, y_small, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(z_pad[..., used], z_small, rtol=1e-5, atol=1e-6)
  off = np.asarray(models.band_mask(5, jnp.array([3, 2]))) == 0
  assert off.sum() == 5 and np.all(np.asarray(z_pad)[..., off] == 0)


def test_band_rule_takes_the_smallest_total_then_the_slower_explanation():
  # Bands (fast tau 2, slow tau 50). Totals 2 and 3 reach 95% of every larger total's gain:
  # at total 2, (0, 2) and (2, 0) tie, and the slower one, (0, 2), wins.
  combos = np.array([[1, 0], [0, 1], [2, 0], [0, 2], [1, 1], [2, 1], [1, 2]])
  gain = np.array([0.5, 0.5, 0.97, 0.96, 0.9, 1.0, 0.99])
  assert dimension.choose_bands(combos, gain, (2, 50)) == (0, 2)
  assert dimension.choose_bands(combos, gain, (50, 2)) == (2, 0)  # band 0 is now the slow one
  gain[[2, 3]] = 0.9  # no total-2 combination reaches 95% of the total-3 ones
  assert dimension.choose_bands(combos, gain, (2, 50)) == (1, 2)
  assert dimension.choose_bands(combos, -gain, (2, 50)) == (0, 0)


def test_multiscale_generator_counts_are_the_rules_own_answer():
  # make_multiscale at the recovery test's scale (30 neurons, 2000 bins, noise std 0.5):
  # multiscale_signals are the data's signals (their least-squares readouts all have the norm
  # sqrt(neurons / signals) of the equal-norm readout, within 2%); oracle_band_gains of all
  # signals equals a direct least-squares fit (train block, scored on validation), 0 latents
  # gain nothing and counts above a band's signals add nothing; and the rule on the true
  # signals' gains answers the generator's 4 fast + 3 slow on data seeds 0-2. With variances
  # over 4x (the generator before equal shares), data seed 1 answers 3 + 3.
  combos = np.array([[f, s] for f in (0, 3, 4) for s in (0, 3, 4)] + [[6, 6]])
  for seed, spread, answer in (
    (0, 1.0, (4, 3)),
    (1, 1.0, (4, 3)),
    (2, 1.0, (4, 3)),
    (1, 4.0, (3, 3)),
  ):
    kw = dict(neurons=30, time=2000, noise_std=0.5, spread=spread, seed=seed)
    x = synthetic.make_multiscale(**kw).x_LTN[0].astype(np.float64)
    z_by_band = synthetic.multiscale_signals(**kw)
    assert [z.shape for z in z_by_band] == [(2000, 4), (2000, 3)]
    a = np.concatenate([np.ones((2000, 1)), *z_by_band], axis=1)
    b = np.linalg.lstsq(a[:1400], x[:1400], rcond=None)[0]
    if spread == 1.0:
      np.testing.assert_allclose(np.linalg.norm(b[1:], axis=1), np.sqrt(30 / 7), rtol=0.02)
    gain = dimension.oracle_band_gains(x, z_by_band, combos)
    direct = (
      ((x[1400:1600] - x[:1400].mean(0)) ** 2).sum()
      - ((x[1400:1600] - a[1400:1600] @ b) ** 2).sum()
    ) / x[1400:1600].size
    np.testing.assert_allclose(gain[[0, 8, 9]], [0.0, direct, direct], atol=1e-9)
    assert dimension.choose_bands(combos, gain, (2, 50)) == answer, (seed, spread)


def test_multiscale_settings_are_checked():
  with pytest.raises(UserError, match=r"^--model=multiscale needs --timescales"):
    config.Settings(model="multiscale", latents=(0, 2))
  with pytest.raises(
    UserError,
    match=r"^--timescales sets the bands of --model=multiscale; it "
    r"has no effect with --model=autoencoder: drop it$",
  ):
    config.Settings(latents=(2,), timescales=(2, 50))
  assert config.Settings(model="multiscale", latents=(0, 2), timescales=(2, 50)).latents == (0, 2)


def test_multiscale_sweep_recovers_known_counts_per_band():
  # 4 signals with correlation times around 2 bins and 3 around 50 (make_multiscale, equal
  # shares), 30 neurons, 2000 bins; bands tau = 2, 50 and every combination of 0, 3, 4 latents
  # per band (8 models), an encoder of 32 units, 800 steps: the rule chooses exactly 4 fast and
  # 3 slow latents, total 7 (as it does on data seeds 1 and 2 at these settings).
  ds = synthetic.make_multiscale(
    bands=(4, 3), timescales=(2, 50), neurons=30, time=2000, noise_std=0.5
  )
  cfg = config.Settings(
    model="multiscale",
    timescales=(2, 50),
    latents=(0, 3, 4),
    seeds=1,
    hidden=32,
    steps=800,
    log_every=800,
    bootstrap=50,
    baselines=(),
  )
  prep = splits.prepare(ds, cfg)
  with pytest.raises(UserError) as e:
    sweep.build(prep, cfg, batching="by_latent")
  assert str(e.value) == (
    "--batching=by_latent cuts models to one latent width, and this "
    "model's latent size is not one width (it has one per band): use "
    "--batching=vmap or auto"
  )
  out = sweep.run_sweep(prep, cfg, log=lambda s: None)
  assert len(out.table) == 8 and sorted(map(tuple, out.table.bands.tolist()))[0] == (0, 3)
  ev = evaluate.evaluate_sweep(prep, cfg, out, log=lambda s: None)
  assert ev["optimal_latent_bands"] == {"0": [4, 3]} and ev["optimal_latent"] == {"0": 7}
