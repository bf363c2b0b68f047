"""The standard estimators beside the sweep (`evaluation.comparators`) and the manifold families
(`data.manifolds`), on data whose answers are known."""

import numpy as np
import pytest

from nmas_jax.data import manifolds, synthetic
from nmas_jax.evaluation import comparators


def _low_rank(k: int, time: int = 2000, neurons: int = 40, noise: float = 0.5, seed: int = 0):
  """k independent unit-variance factors through a random readout (signal variance about 1 per
  neuron per factor), plus isotropic Gaussian noise: [time, neurons]."""
  rng = np.random.default_rng(seed)
  signal = rng.standard_normal((time, k)) @ rng.standard_normal((k, neurons))
  return signal + noise * rng.standard_normal((time, neurons))


@pytest.mark.parametrize("k", [1, 4])
def test_linear_counts_recover_the_rank_of_a_low_rank_signal_in_isotropic_noise(k):
  x = _low_rank(k)
  assert comparators.parallel_analysis(x) == k
  assert comparators.pca_mle(x) == k
  assert comparators.svca_reliable(x[:1400], x[1400:]) == k


def test_svca_counts_nothing_reliable_in_independent_noise():
  x = np.random.default_rng(1).standard_normal((2000, 40))
  assert comparators.svca_reliable(x[:1400], x[1400:]) == 0


def test_intrinsic_dimension_of_a_noiseless_plane_and_curve_in_ten_dimensions():
  """TwoNN and the Levina-Bickel MLE within 0.3 of 2 on a flat 2-D sheet and of 1 on a closed
  curve (a circle through a random linear map), both embedded in 10 dimensions."""
  rng = np.random.default_rng(2)
  sheet = rng.uniform(size=(2000, 2)) @ rng.standard_normal((2, 10))
  theta = rng.uniform(0, 2 * np.pi, 2000)
  curve = np.c_[np.cos(theta), np.sin(theta)] @ rng.standard_normal((2, 10))
  for x, d in ((sheet, 2), (curve, 1)):
    assert abs(comparators.two_nn(x) - d) < 0.3
    assert abs(comparators.levina_bickel(x) - d) < 0.3


def test_intrinsic_dimensions_are_measured_on_the_denoised_cloud():
  """A circle through a random map into 40 dimensions plus isotropic noise: TwoNN and the MLE on
  the raw points exceed 10 (noise fills every dimension); `comparators` projects on the
  parallel-analysis components (2 here) first, and both come out at most 2.2."""
  rng = np.random.default_rng(7)
  theta = rng.uniform(0, 2 * np.pi, 3000)
  x = np.c_[np.cos(theta), np.sin(theta)] @ rng.standard_normal((2, 40))
  x = x + 0.3 * rng.standard_normal((3000, 40))
  assert comparators.two_nn(x[:2000]) > 10 and comparators.levina_bickel(x[:2000]) > 10
  out = comparators.comparators(x[:2000], x[2000:])
  assert out["parallel_analysis"] == 2
  assert out["two_nn"] <= 2.2 and out["mle"] <= 2.2


@pytest.mark.parametrize("name", ["ring", "torus", "sequence", "calcium"])
def test_manifold_families_are_deterministic_named_and_keep_their_noiseless_mean(name):
  make = synthetic.FAMILIES[name]
  a, b, c = make(seed=3), make(seed=3), make(seed=4)
  np.testing.assert_array_equal(a.x_LTN, b.x_LTN)
  assert not np.array_equal(a.x_LTN, c.x_LTN)
  assert a.name == name and a.rates_LTN.shape == a.x_LTN.shape
  truths = {"ring": [2], "torus": [3], "sequence": [2], "calcium": [3, 7]}[name]
  assert list(a.true_latent.values()) == truths
  assert a.meta["seed"] == 3


def test_a_ring_spans_more_linear_dimensions_than_its_manifold_has():
  """The noiseless ring (a 1-D circle, 2 latents for a per-time-step decoder) needs more than 2
  principal components for 90% of its variance: the case linear methods get wrong."""
  ring = manifolds.make_ring(seed=5).rates_LTN[0]
  lam = np.sort(np.linalg.eigvalsh(np.cov(ring.T)))[::-1]
  assert np.searchsorted(np.cumsum(lam) / lam.sum(), 0.9) + 1 > 2


def test_seed_consistency_is_one_for_latents_equal_up_to_a_linear_map_and_low_for_noise():
  """Two models whose latents are the same trajectory through different invertible maps score
  R^2 1 (to rounding); latents of independent noise score near 0 (below 0.05); each model's own
  score is the mean of the pairs it is in (here its only pair, both ways)."""
  from nmas_jax.evaluation import consistency

  rng = np.random.default_rng(6)
  s = np.cumsum(rng.standard_normal((600, 3)), axis=0)  # one shared 3-D trajectory
  maps = [rng.standard_normal((3, 3)) for _ in range(2)]
  z = np.stack([s @ m for m in maps] + [rng.standard_normal((600, 3)) for _ in range(2)])
  out, per_model = consistency.seed_consistency(
    z[:, :400], z[:, 400:], np.zeros(4, int), np.array([3, 3, 2, 2]), ["0"], [2, 3]
  )
  r2 = dict(zip(out["0"]["latents"], out["0"]["r2"]))
  assert r2[3] > 0.999 and abs(r2[2]) < 0.05
  assert per_model[0]["seed_consistency_r2"] == per_model[1]["seed_consistency_r2"] == r2[3]
  assert per_model[2]["seed_consistency_r2"] == r2[2]


def test_few_shot_readout_scores_signal_latents_high_and_noise_latents_at_most_zero():
  """A few-shot readout from latents that are the held-out neurons' true signal scores R^2 > 0.9
  on validation; from pure-noise latents of the same width, at most 0.05."""
  from nmas_jax.evaluation import consistency

  rng = np.random.default_rng(7)
  z = np.cumsum(rng.standard_normal((1000, 3)), axis=0) / 10
  y = z @ rng.standard_normal((3, 5)) + 0.1 * rng.standard_normal((1000, 5))
  noise = rng.standard_normal((1000, 3))
  good = consistency.few_shot(z[:800], y[:800], z[800:], y[800:], 10, rng)
  bad = consistency.few_shot(noise[:800], y[:800], noise[800:], y[800:], 10, rng)
  assert good > 0.9 and bad < 0.05


def test_the_few_shot_guard_and_the_sentence_on_the_scores_above_the_chosen_size():
  """`guarded`: the latent at or below the chosen one with the best few-shot R^2 (the smaller on
  a tie); `above_chosen` says whether each score falls at the next larger latent."""
  from nmas_jax.evaluation import consistency

  c = {"latents": [2, 3, 4, 6], "r2": [0.9, 0.95, 0.7, 0.6], "few_shot_r2": [0.5, 0.6, 0.6, 0.4]}
  assert consistency.guarded(c, 4) == 3 and consistency.guarded(c, 2) == 2
  assert consistency.guarded({"latents": [2], "r2": [1.0]}, 2) is None
  assert consistency.above_chosen(c, 3) == (
    "above the chosen 3, few-shot co-smoothing does not fall (0.60 at 3, 0.60 at 4); "
    "seed consistency falls (0.95 at 3, 0.70 at 4)"
  )
  assert consistency.above_chosen(c, 6) == ""
