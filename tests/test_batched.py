"""The batched device baselines against the float64 numpy reference (`baselines`). One batched
fit of every neuron set (two held-out sets, a --neuron_counts-like subset of 8 held-in neurons,
and the all-neuron reconstruction) is shared by the tests, so each program compiles once."""

import functools

import numpy as np
import pytest

from nmas_jax.data import synthetic
from nmas_jax.evaluation import baselines, batched

SIZES = (1, 3, 6)


@functools.cache
def _data():
  x = synthetic.make_linear_gaussian(true_latents=(4,), neurons=20, time=300, seed=3).x_LTN[0]
  held = np.zeros((2, 20), bool)
  held[0, [1, 5, 9, 13]] = held[1, [0, 2, 4, 6]] = True
  subset = ~held[0] & (np.cumsum(~held[0]) <= 8)
  return x[:220], x[220:], held, subset


@pytest.fixture(scope="module")
def fitted():
  train, ev, held, subset = _data()
  sets = np.stack([~held[0], ~held[1], subset])
  return batched.layer(train, ev, sets, SIZES, ("pca", "fa"), True)


def _rel(a, b):
  return np.abs(np.asarray(a) - b).max() / np.abs(b).max()


def test_pca_every_set_and_size_in_one_program_equals_the_numpy_reference(fitted):
  """Padded to the largest latent and masked: each held-out set's co-smoothing prediction of its
  held-out neurons, and the all-neuron reconstruction, equal `baselines.predictions` at each
  latent size alone (float32 against float64: within 1e-5 of the largest value). The set that
  sees only 8 of the held-in neurons equals the reference on those columns alone."""
  train, ev, held, subset = _data()
  for j, k in enumerate(SIZES):
    for s in range(2):
      ref = baselines.predictions(train, ev, held[s], k, reconstruct=True, methods=("pca",))
      cols = held[s]
      assert _rel(fitted["pca_cosmooth"][s, j][:, cols], ref["pca_cosmooth"][:, cols]) < 1e-5
      assert _rel(fitted["pca"][j], ref["pca"]) < 1e-5
    keep = subset | held[0]
    ref = baselines.predictions(train[:, keep], ev[:, keep], held[0][keep], k, methods=("pca",))
    got = fitted["pca_cosmooth"][2, j][:, held[0]]
    assert _rel(got, ref["pca_cosmooth"][:, held[0][keep]]) < 1e-5


def test_fa_em_equals_the_numpy_reference_at_fixed_iterations_and_predicts_alike(fitted):
  """FA by EM, padded and masked, at 30 iterations with no early stop: the all-neuron fit's
  W W^T and psi equal `baselines.fa_fit` (within 1e-5), its padded columns zero; with the
  default stopping (a relative log-likelihood change under 1e-6, which float32 reaches at a
  different iteration) the co-smoothing predictions agree within 1% of the largest value."""
  import jax.numpy as jnp

  train, ev, held, subset = _data()
  f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))
  sets = np.stack([~held[0], ~held[1], subset, np.ones(20, bool)])
  args = (f32(train), f32(ev), f32(sets), jnp.asarray(SIZES))
  *_, w, psi = batched.fa(*args, kmax=6, iters=30, tol=0.0)
  for j, k in enumerate(SIZES):
    _, w_ref, psi_ref, _ = baselines.fa_fit(train, k, iters=30, tol=0)
    got = np.asarray(w[-1, j])[:, :k]
    assert _rel(got @ got.T, w_ref @ w_ref.T) < 1e-5 and _rel(psi[-1, j], psi_ref) < 1e-5
    assert not np.asarray(w[-1, j])[:, k:].any()
    for s in range(2):
      ref = baselines.predictions(train, ev, held[s], k, reconstruct=False, methods=("fa",))
      cols = held[s]
      assert _rel(fitted["fa_cosmooth"][s, j][:, cols], ref["fa_cosmooth"][:, cols]) < 1e-2


def test_the_numpy_door_returns_what_the_batched_programs_return(fitted):
  """`baselines.layer` (the CPU's path for small layers, `batched.on_device`) has
  `batched.layer`'s keys and shapes, and agrees on each set's held-out neurons: PCA within 1e-5,
  FA within 1% (its float32 early stop), the all-neuron reconstructions likewise."""
  train, ev, held, subset = _data()
  host = baselines.layer(
    train, ev, np.stack([~held[0], ~held[1], subset]), SIZES, ("pca", "fa"), True
  )
  assert set(fitted) == set(host) and sorted(host["fa_fit"]) == sorted(fitted["fa_fit"])
  for s in range(2):
    cols = held[s]
    assert _rel(fitted["pca_cosmooth"][s][..., cols], host["pca_cosmooth"][s][..., cols]) < 1e-5
    assert _rel(fitted["fa_cosmooth"][s][..., cols], host["fa_cosmooth"][s][..., cols]) < 1e-2
  assert _rel(fitted["pca"], host["pca"]) < 1e-5 and _rel(fitted["fa"], host["fa"]) < 1e-2
