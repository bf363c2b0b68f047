"""The batched device baselines against the float64 numpy reference (`baselines`)."""

import numpy as np

from nmas_jax.data import synthetic
from nmas_jax.evaluation import baselines, batched

SIZES = (1, 3, 6)


def _data():
  x = synthetic.make_linear_gaussian(true_latents=(4,), neurons=20, time=300, seed=3).x_LTN[0]
  held = np.zeros((2, 20), bool)
  held[0, [1, 5, 9, 13]] = held[1, [0, 2, 4, 6]] = True
  return x[:220], x[220:], held


def _rel(a, b):
  return np.abs(np.asarray(a) - b).max() / np.abs(b).max()


def test_pca_every_set_and_size_in_one_program_equals_the_numpy_reference():
  """Padded to the largest latent and masked: each held-out set's co-smoothing prediction of its
  held-out neurons, and the all-neuron reconstruction, equal `baselines.predictions` at each
  latent size alone (float32 against float64: within 1e-5 of the largest value). A set that
  sees only 8 of the held-in neurons (a --neuron_counts subset) equals the reference on those
  columns alone."""
  train, ev, held = _data()
  subset = ~held[0] & (np.cumsum(~held[0]) <= 8)
  out = batched.layer(train, ev, np.stack([~held[0], ~held[1], subset]), SIZES, ("pca",), True)
  for j, k in enumerate(SIZES):
    for s in range(2):
      ref = baselines.predictions(train, ev, held[s], k, reconstruct=True, methods=("pca",))
      cols = held[s]
      assert _rel(out["pca_cosmooth"][s, j][:, cols], ref["pca_cosmooth"][:, cols]) < 1e-5
      assert _rel(out["pca"][j], ref["pca"]) < 1e-5
    keep = subset | held[0]
    ref = baselines.predictions(train[:, keep], ev[:, keep], held[0][keep], k, methods=("pca",))
    got = out["pca_cosmooth"][2, j][:, held[0]]
    assert _rel(got, ref["pca_cosmooth"][:, held[0][keep]]) < 1e-5


def test_fa_em_equals_the_numpy_reference_at_fixed_iterations_and_predicts_alike():
  """FA by EM, padded and masked, at 30 iterations with no early stop: the all-neuron fit's
  W W^T and psi equal `baselines.fa_fit` (within 1e-5); with the default stopping (a relative
  log-likelihood change under 1e-6, which float32 reaches at a different iteration) the
  co-smoothing predictions agree within 1% of the largest value."""
  import jax.numpy as jnp

  train, ev, held = _data()
  f32 = lambda a: jnp.asarray(np.asarray(a, np.float32))
  args = (f32(train), f32(ev), f32(np.ones((1, 20))), jnp.asarray(SIZES))
  *_, w, psi = batched.fa(*args, kmax=6, iters=30, tol=0.0)
  for j, k in enumerate(SIZES):
    _, w_ref, psi_ref, _ = baselines.fa_fit(train, k, iters=30, tol=0)
    got = np.asarray(w[0, j])[:, :k]
    assert _rel(got @ got.T, w_ref @ w_ref.T) < 1e-5 and _rel(psi[0, j], psi_ref) < 1e-5
    assert not np.asarray(w[0, j])[:, k:].any()  # the padded columns stay zero
  out = batched.layer(train, ev, ~held, SIZES, ("fa",), False)
  for j, k in enumerate(SIZES):
    for s in range(2):
      ref = baselines.predictions(train, ev, held[s], k, reconstruct=False, methods=("fa",))
      cols = held[s]
      assert _rel(out["fa_cosmooth"][s, j][:, cols], ref["fa_cosmooth"][:, cols]) < 1e-2


def test_the_numpy_door_returns_what_the_batched_programs_return():
  """`baselines.layer` (the CPU's path for small layers, `batched.on_device`) has
  `batched.layer`'s keys and shapes, and agrees on each set's held-out neurons: PCA within 1e-5,
  FA within 1% (its float32 early stop), the all-neuron reconstructions likewise."""
  train, ev, held = _data()
  args = (train, ev, ~held, SIZES, ("pca", "fa"), True)
  dev, host = batched.layer(*args), baselines.layer(*args)
  assert set(dev) == set(host) and sorted(dev["fa_fit"]) == sorted(host["fa_fit"]) == list(SIZES)
  for s in range(2):
    assert _rel(dev["pca_cosmooth"][s][..., held[s]], host["pca_cosmooth"][s][..., held[s]]) < 1e-5
    assert _rel(dev["fa_cosmooth"][s][..., held[s]], host["fa_cosmooth"][s][..., held[s]]) < 1e-2
  assert _rel(dev["pca"], host["pca"]) < 1e-5 and _rel(dev["fa"], host["fa"]) < 1e-2
