"""Evaluation: baselines against direct references, bits/spike by hand, dimension rules,
recovery."""

import numpy as np
import pytest

from nmas_jax import config
from nmas_jax.data import splits, synthetic
from nmas_jax.evaluation import baselines, dimension, evaluate, metrics
from nmas_jax.training import sweep


def _lowrank(seed=0, t=400, n=12, k=3, noise=0.3, noise_var=False):
  """[t, n] rank-k signal plus noise of a different std per neuron (and those variances [n])."""
  rng = np.random.default_rng(seed)
  z = rng.standard_normal((t, k))
  w = rng.standard_normal((k, n))
  eps = rng.standard_normal((t, n))
  scale = noise * rng.uniform(0.5, 1.5, n)
  x = z @ w + eps * scale + 2.0
  return (x, scale**2) if noise_var else x


def test_pca_baseline_equals_direct_svd_reconstruction():
  x = _lowrank()
  train, valid = x[:300], x[300:]
  held = np.zeros(12, bool)
  for k in (1, 3, 5):
    mean = train.mean(axis=0)
    u, s, vt = np.linalg.svd(train - mean)
    ref = mean + (valid - mean) @ vt[:k].T @ vt[:k]
    np.testing.assert_allclose(baselines.predictions(train, valid, held, k)["pca"], ref, atol=1e-10)


def test_fa_log_likelihood_equals_the_dense_gaussian_one():
  # fa_loglik works through k x k matrices; the reference builds C = W W^T + diag(psi) [N, N].
  rng = np.random.default_rng(3)
  x = rng.standard_normal((200, 30)) @ rng.standard_normal((30, 30))
  s = np.cov(x.T, bias=True)
  w, psi = rng.standard_normal((30, 4)), rng.uniform(0.5, 2.0, 30)
  c = w @ w.T + np.diag(psi)
  dense = -0.5 * (
    30 * np.log(2 * np.pi) + np.linalg.slogdet(c)[1] + np.trace(np.linalg.solve(c, s))
  )
  np.testing.assert_allclose(baselines.fa_loglik(s, w, psi), dense, rtol=1e-10)


def test_fa_log_likelihood_increases_over_em_iterations():
  x, noise_var = _lowrank(seed=1, noise_var=True)
  _, w, psi, history = baselines.fa_fit(x, 3, iters=50, tol=0)
  assert len(history) == 51
  assert np.all(np.diff(history) >= -1e-9)
  assert history[-1] > history[0]
  # Unlike PCA's isotropic noise, the fitted noise variances track the true heterogeneous ones.
  assert psi.min() > 0 and w.shape == (12, 3)
  assert np.corrcoef(psi, noise_var)[0, 1] > 0.95
  np.testing.assert_allclose(psi, noise_var, rtol=0.3)


def test_cosmooth_baseline_uses_only_held_in_neurons_for_latents():
  x = _lowrank(seed=2)
  held = np.zeros(12, bool)
  held[[2, 7]] = True
  p = baselines.predictions(x[:300], x[300:], held, 3)
  assert np.all(np.isnan(p["pca_cosmooth"][:, ~held]))
  # Changing held-out neurons in the validation block cannot change their prediction.
  x2 = x.copy()
  x2[300:, held] += 100.0
  p2 = baselines.predictions(x2[:300], x2[300:], held, 3)
  np.testing.assert_allclose(p["pca_cosmooth"][:, held], p2["pca_cosmooth"][:, held])
  np.testing.assert_allclose(p["fa_cosmooth"][:, held], p2["fa_cosmooth"][:, held])
  r2 = metrics.neuron_r2(p["pca_cosmooth"][:, held], x[300:, held])
  assert np.all(r2 > 0.5)


def test_bits_per_spike_by_hand():
  x = np.array([[0.0, 2.0], [1.0, 0.0], [3.0, 1.0]])
  rate = np.array([[0.5, 1.5], [1.0, 0.5], [2.5, 1.0]])

  def nll(r):
    return sum(r[i, j] - x[i, j] * np.log(r[i, j]) for i in range(3) for j in range(2))

  null = np.array([[4 / 3, 1.0]] * 3)
  expected = (nll(null) - nll(rate)) / 7.0 / np.log(2)
  assert metrics.bits_per_spike(rate, x) == pytest.approx(expected, rel=1e-12)
  assert metrics.bits_per_spike(null, x) == pytest.approx(0.0, abs=1e-12)


def test_r2_by_hand():
  x = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
  pred = np.array([[1.0, 0.0], [2.5, 0.0], [3.0, 0.0]])
  r2 = metrics.neuron_r2(pred, x)
  assert r2[0] == pytest.approx(1 - 0.25 / 2.0) and np.isnan(r2[1])


# The prototype numbers from the issue: held-out Poisson NLL (lower is better) by latent,
# 3 seeds, on Lorenz data (true dimension 3). SEs were 3-45.
PROTO_LATENTS = (1, 2, 3, 4, 6, 8, 12)
PROTO_NLL = np.array([-89951, -104790, -106626, -106949, -107063, -107103, -107131], float)


def _curves(gain, se=None, seeds=3, blocks=20, noise=0.0, seed=0):
  """estimate()'s inputs for a gain curve [K] (per element, mean over seeds, SE over seeds `se`):
  losses [K, seeds, blocks] under a null of loss 0 and one element per block."""
  gain = np.asarray(gain, float)
  se = np.zeros_like(gain) if se is None else np.asarray(se, float)
  dev = np.linspace(-1, 1, seeds) if seeds > 1 else np.zeros(1)
  dev = dev / (dev.std(ddof=1) if seeds > 1 else 1.0) * np.sqrt(seeds)  # mean 0, SE 1 over seeds
  g_KS = gain[:, None] + se[:, None] * dev[None, :]
  rng = np.random.default_rng(seed)
  jitter = noise * rng.standard_normal((len(gain), seeds, blocks))
  loss = -g_KS[:, :, None] + jitter - jitter.mean(axis=2, keepdims=True)
  return loss, np.zeros((seeds, blocks)), np.ones((seeds, blocks))


def _choose(latents, gain):
  return dimension.choose(latents, np.asarray(gain, float))


def test_rule_on_the_lorenz_prototype_for_any_null_and_grid_start():
  # Gain over the zero-latent null: whatever that null scores (no better than k=1), 3 latents
  # reach 95% of every larger latent's gain and 2 do not.
  for null_nll in (-89951.0, -80000.0, -70000.0):
    gain = null_nll - PROTO_NLL
    assert _choose(PROTO_LATENTS, gain) == 3
    # Grids starting at 1, 2, 3 or 4: the smallest swept latent at or above 3.
    for start, answer in ((1, 3), (2, 3), (3, 3), (4, 4)):
      keep = [i for i, k in enumerate(PROTO_LATENTS) if k >= start]
      assert _choose([PROTO_LATENTS[i] for i in keep], gain[keep]) == answer, (null_nll, start)


def test_rule_is_grid_invariant_on_constructed_curves():
  """Adding latents above the answer whose gain stays within the rule's tolerance (a plateau),
  or below it whose gain falls short of the rule, never changes the answer."""
  rng = np.random.default_rng(0)
  full = np.arange(1, 41)
  for truth in (2, 5, 13):
    for rise in ("linear", "concave"):
      # Rises to the truth, then a plateau gaining at most 5% more up to k=40 (slope 0 .. 0.05).
      base = full / truth if rise == "linear" else 1 - np.exp(-3 * full / truth)
      g = np.where(full <= truth, base, base[truth - 1] * (1 + 0.05 * (full - truth) / 40))
      answer = _choose(full, g)
      assert truth - 1 <= answer <= truth
      for _ in range(50):
        grid = np.unique(np.concatenate([[answer], rng.choice(full, rng.integers(1, 8))]))
        assert _choose(grid, g[grid - 1]) == answer, (truth, rise, grid)


def test_the_knife_edge_curve_goes_to_the_next_latent():
  # The Lorenz curve with a linear readout: 2 latents reach 94.6% of the best gain,
  # short of 95%: the rule takes 3, the smallest latent reaching it.
  assert _choose((1, 2, 3, 4, 6), [0.61, 0.946, 0.984, 0.991, 1.0]) == 3
  # The MLP readout's curve: 2 latents reach 98.8%.
  assert _choose((1, 2, 3, 4), [0.826, 0.988, 0.999, 1.0]) == 2
  # A softplus readout of 25 signals, MLP decoder: 25.
  assert _choose((3, 6, 12, 25, 50), [0.194, 0.292, 0.588, 0.983, 1.0]) == 25


def test_no_gain_over_the_null_is_dimension_zero():
  # Every latent at or below the null: no shared structure (was: the smallest latent).
  assert _choose((2, 4, 8), [-0.1, -0.05, 0.0]) == 0
  d = dimension.estimate((2, 4, 8), *_curves([-0.01, 0.0, -0.02], se=[0.01] * 3, noise=0.05))
  assert d["optimal"] == 0 and d["interval"][0] == 0 and d["p_positive"] < 0.95
  # A gain well above the null and its noise is not zero.
  d = dimension.estimate((2, 4, 8), *_curves([0.5, 0.9, 0.91], se=[0.01] * 3, noise=0.05))
  assert d["optimal"] == 4 and d["p_positive"] == 1.0 and d["interval"] == [4, 4]


def test_bootstrap_interval_and_alternatives():
  # A clean plateau with seed noise: the best is 8 but 4 is within one SE of it.
  d = dimension.estimate(
    (1, 2, 3, 4, 8), *_curves([1.0, 2.0, 3.0, 3.95, 4.0], se=[0.1] * 5, noise=0.2)
  )
  np.testing.assert_allclose(d["gain"], [1.0, 2.0, 3.0, 3.95, 4.0], atol=1e-9)
  np.testing.assert_allclose(d["gain_se"], 0.1, atol=1e-9)
  assert d["one_se"] == 4 and d["optimal"] == 4 and d["interval"][0] <= 4 <= d["interval"][1]
  # With one seed the SE is 0: one-SE picks the best.
  d = dimension.estimate((1, 2, 3, 4, 8), *_curves([1.0, 2.0, 3.0, 3.95, 4.0], seeds=1))
  assert d["one_se"] == 8 and d["interval"] == [4, 4]
  # Lorenz prototype: one-SE drifts to the largest latent, the rule does not.
  d = dimension.estimate(PROTO_LATENTS, *_curves(-89951.0 - PROTO_NLL, se=[10.0] * 7))
  assert d["one_se"] == 12 and d["optimal"] == 3 and d["knee"] in (2, 3)


def test_detectable_latent_counts_small_but_reliable_gains():
  # A third latent adds 4% of the gain, reliably over blocks and seeds: the rule (95% of the
  # gain) stops at 2, detectable at 3; 4 and 8 gain nothing more, so neither moves it.
  d = dimension.estimate((1, 2, 3, 4, 8), *_curves([0.5, 0.96, 1.0, 1.0, 1.0], noise=0.05))
  assert d["optimal"] == 2 and d["detectable"] == 3
  # Seed-to-seed noise larger than a gain step: the step is not detectable.
  d = dimension.estimate(
    (1, 2, 3, 4, 8), *_curves([1.0, 2.0, 3.0, 3.95, 4.0], se=[0.1] * 5, noise=0.2)
  )
  assert d["detectable"] == 4
  # No gain over the null: 0, like the rule.
  d = dimension.estimate((2, 4, 8), *_curves([-0.01, 0.0, -0.02], se=[0.01] * 3, noise=0.05))
  assert d["detectable"] == 0


def test_diverged_models_are_ignored():
  loss, null, count = _curves([1.0, 2.0, 2.0], se=[0.01] * 3)
  loss[1] = np.nan  # every seed of latent 2 diverged
  d = dimension.estimate((1, 2, 3), loss, null, count)
  assert d["optimal"] == 3 and d["detectable"] == 3 and d["gain"][1] is None


def test_sweep_recovers_the_true_dimension_on_small_synthetic_data():
  ds = synthetic.make_synthetic(true_latents=(2, 6), neurons=40, time=1200, noise_std=0.3, seed=0)
  latents = (1, 2, 4, 6, 10)
  cfg = config.Settings(
    latents=latents,
    hidden=24,
    window=20,
    batch_size=16,
    steps=400,
    bidirectional=False,
    learning_rate=1e-2,
    log_every=400,
    seeds=2,
  )
  prep = splits.prepare(ds, cfg)
  out = sweep.run_sweep(prep, cfg, log=lambda s: None)
  ev = evaluate.evaluate_sweep(prep, cfg, out, log=lambda s: None)
  assert ev["dimension"]["metric"] == "cosmooth_mse"
  for layer, true in ds.true_latent.items():
    i = latents.index(true)
    assert (
      latents[max(i - 1, 0)] <= ev["optimal_latent"][layer] <= latents[min(i + 1, len(latents) - 1)]
    )
  for row in ev["baselines"]:
    assert np.isfinite(row["pca_cosmooth_mse"]) and np.isfinite(row["fa_cosmooth_mse"])
  # The LSTM's co-smoothing error at the true dimension (mean over seeds) is within 10% of FA's.
  for l, (layer, true) in enumerate(ds.true_latent.items()):
    lstm = [
      m["cosmooth_mse"]
      for i, m in enumerate(ev["per_model"])
      if out.table.layer[i] == l and out.table.latent[i] == true
    ]
    fa = next(
      r["fa_cosmooth_mse"] for r in ev["baselines"] if (r["layer"], r["latent"]) == (layer, true)
    )
    assert len(lstm) == 2 and np.mean(lstm) <= 1.1 * fa
  # PCA and FA, chosen by the same rule on their own curves, find the truth too (linear data).
  assert ev["baseline_optimal_latent"] == {"pca": {"0": 2, "1": 6}, "fa": {"0": 2, "1": 6}}
  assert all(
    lo <= ev["optimal_latent"][n] <= hi for n, (lo, hi) in ev["optimal_latent_interval"].items()
  )


def test_progress_lines_count_done_and_end_without_eta():
  # every_s=0: one line per step; each says done/total and, until the last, an ETA.
  lines = []
  p = evaluate.Progress("layers' baselines", 3, lines.append, every_s=0.0)
  for _ in range(3):
    p.step()
  assert [line.split(",")[0] for line in lines] == [
    "  1/3 layers' baselines",
    "  2/3 layers' baselines",
    "  3/3 layers' baselines",
  ]
  assert all("ETA" in line for line in lines[:2]) and "ETA" not in lines[2]
  # A long every_s keeps only the last line.
  quiet = []
  q = evaluate.Progress("x", 4, quiet.append, every_s=1e9)
  for _ in range(4):
    q.step()
  assert len(quiet) == 1 and quiet[0].startswith("  4/4 x")


def test_oracle_gains_answer_the_generators_rank_when_every_direction_matters():
  # Three equal, orthogonal signal directions (Gaussian means, or Poisson log-rates): the rule on
  # the oracle's curve is the smallest grid latent at or above 3, and every k >= 3 gains the same.
  rng = np.random.default_rng(0)
  z_T3 = rng.standard_normal((3000, 3))
  w_3N = np.linalg.qr(rng.standard_normal((40, 3)))[0].T * np.sqrt(40 / 3)  # orthogonal rows
  mean_TN = z_T3 @ w_3N * 0.5
  rates_TN = np.exp(np.log(0.3) + mean_TN)  # 0.3 spikes per bin, log-rate std 0.5
  for x, truth, counts in (
    (mean_TN + rng.standard_normal(mean_TN.shape), mean_TN, False),
    (rng.poisson(rates_TN).astype(float), rates_TN, True),
  ):
    for grid, answer in (((1, 2, 3, 5), 3), ((2, 4, 8), 4)):
      g = dimension.oracle_gains(x, truth, grid, counts)
      assert dimension.choose(grid, g) == answer, (counts, grid, g)
      np.testing.assert_allclose(g[[i for i, k in enumerate(grid) if k >= 3]], g[-1], rtol=1e-6)
