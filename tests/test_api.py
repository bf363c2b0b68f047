"""DimensionSweep: scikit-learn conventions, fit/transform/score, save/load, shuffle control."""

import numpy as np
import pytest

from nmas_jax import DimensionSweep, phases
from nmas_jax.data import synthetic
from nmas_jax.errors import UserError

TINY = dict(
  hidden=16,
  window=20,
  batch_size=16,
  steps=250,
  learning_rate=1e-2,
  log_every=50,
  seeds=2,
  bidirectional=False,
  verbose=False,
)


@pytest.fixture(scope="module")
def fitted():
  ds = synthetic.make_synthetic(true_latents=(3, 6), neurons=30, time=1000, noise_std=0.3, seed=0)
  est = DimensionSweep(latents=(1, 3, 6, 8), shuffle_control=True, **TINY).fit(ds)
  return est, ds


def test_params_follow_sklearn_conventions():
  est = DimensionSweep(latents=(1, 2), steps=7)
  assert not hasattr(est, "results_")  # no work in __init__
  p = est.get_params()
  assert p["latents"] == (1, 2) and p["steps"] == 7 and p["likelihood"] == "auto"
  assert est.set_params(steps=9) is est and est.steps == 9
  with pytest.raises(ValueError, match="unknown parameter 'nope'"):
    est.set_params(nope=1)
  assert DimensionSweep(**est.get_params()).get_params() == est.get_params()
  with pytest.raises(RuntimeError, match="not fitted yet"):
    est.transform(np.zeros((10, 3)))


def test_defaults_match_the_command_line():
  from absl import flags

  from experiments import sweep as cli  # noqa: F401  (defines the flags)

  est = DimensionSweep()
  for name in (
    "hidden",
    "steps",
    "seeds",
    "batch_size",
    "window",
    "learning_rate",
    "weight_decay",
    "decoder",
    "likelihood",
    "heldout_neurons",
    "train_fraction",
    "gain_fraction",
  ):
    assert flags.FLAGS[name].default == getattr(est, name), name
  assert flags.FLAGS["latents"].default == ",".join(map(str, est.latents))


def test_fit_transform_score_plot(fitted):
  est, ds = fitted
  assert set(est.optimal_latent_) == {"0", "1", "0/shuffled", "1/shuffled"}
  assert est.optimal_latent_["0"] in (1, 3, 6) and est.optimal_latent_["1"] in (3, 6, 8)
  z = est.transform(ds.x_LTN[1], layer="1")
  assert z.shape == (1000, est.optimal_latent_["1"])
  z2 = est.transform(ds.x_LTN[1], latent=8, layer=1)
  assert z2.shape == (1000, 8)
  assert np.isfinite(est.score())
  # Scoring the fitted data again reproduces the fitted held-out score.
  np.testing.assert_allclose(est.score(est.dataset_), est.score(), rtol=1e-4)
  fig = est.plot()
  assert len([a for a in fig.axes if a.has_data()]) == 4


def test_shuffle_control_has_no_gain_where_real_data_has_a_large_one(fitted):
  est, _ = fitted
  summary = est.results_["shuffle_control"]
  for layer in ("0", "1"):
    g = summary["layers"][layer]
    # Gains are in -MSE on held-out neurons: real data gains a lot beyond one latent,
    # the control (shared structure destroyed) almost nothing.
    assert g["gain"] > 0.1
    assert abs(g["control_gain"]) < 0.1 * g["gain"]


def test_save_and_load_give_identical_transform(fitted, tmp_path):
  est, ds = fitted
  est.save(str(tmp_path / "model"))
  back = DimensionSweep.load(str(tmp_path / "model"))
  assert back.get_params() == est.get_params()
  assert back.optimal_latent_ == est.optimal_latent_
  np.testing.assert_array_equal(
    back.transform(ds.x_LTN[0], layer="0"), est.transform(ds.x_LTN[0], layer="0")
  )


def test_fit_on_plain_arrays_and_time_every_phase():
  """A [time, neurons] array fits; `phase_seconds_` has a non-negative time for every phase of
  the fit (no workdir: the report phase writes nothing and still has its lap)."""
  x = synthetic.make_synthetic(true_latents=(3,), neurons=12, time=400, seed=2).x_LTN[
    0
  ]  # [time, neurons]
  est = DimensionSweep(latents=(1, 3), **{**TINY, "steps": 30}).fit(x)
  assert est.results_["layers"] == ["0"] and est.transform(x).shape[0] == 400
  assert set(est.phase_seconds_) == set(phases.PHASES) - {"layer_decoding"}
  assert min(est.phase_seconds_.values()) >= 0
  with pytest.raises(UserError, match="X must be"):
    DimensionSweep(**TINY).fit(np.zeros(5))


def test_neuron_folds_train_one_model_per_fold_that_never_sees_its_fold():
  """--neuron_folds=2 with 1 seed: two held-out sets per (layer, latent), disjoint and covering
  every neuron (results.json's indices, each model's `fold`), each model's encoder input mask
  hiding exactly its own fold, and a dimension estimate over both."""
  x = synthetic.make_synthetic(true_latents=(2,), neurons=12, time=400, seed=2).x_LTN[0]
  est = DimensionSweep(latents=(1, 2), neuron_folds=2, **{**TINY, "steps": 20, "seeds": 1}).fit(x)
  r = est.results_
  assert r["neuron_folds"] == 2 and r["seeds"] == [0, 1]
  assert sorted((m["latent"], m["seed"], m["fold"]) for m in r["models"]) == [
    (1, 0, 0),
    (1, 1, 1),
    (2, 0, 0),
    (2, 1, 1),
  ]
  held = [set(r["heldout_neuron_indices"][f"seed {s}"]["0"]) for s in (0, 1)]
  assert held[0].isdisjoint(held[1]) and held[0] | held[1] == set(range(12))
  for s in (0, 1):
    np.testing.assert_array_equal(np.flatnonzero(est.input_mask("0", seed=s) == 0), sorted(held[s]))
  assert r["optimal_latent"]["0"] in (0, 1, 2)
