"""From a numpy array to the chosen dimension and the plot, on the built-in synthetic data."""

import os

from nmas_jax.training import cpu

cpu.tune()  # optional CPU speed-ups (XLA flags, CPU lanes, malloc); before JAX starts computing

from nmas_jax import DimensionSweep  # noqa: E402
from nmas_jax.data import synthetic  # noqa: E402

# NMAS_QUICK=1 (the tests): a reduced sweep, still long enough to find the answer.
quick = os.environ.get("NMAS_QUICK") == "1"
X = synthetic.make_linear_gaussian().x_LTN  # [layers, time, neurons], true dimensions 7, 18, 40
X = X[:2] if quick else X  # the quick sweep: the first two layers
est = DimensionSweep(
  latents=(10, 25, 50) if quick else (10, 25, 50, 75, 150),
  **(dict(seeds=1, steps=120) if quick else {}),
).fit(X)
print("chosen dimension per layer:", est.optimal_latent_)  # {'0': 10, '1': 25, '2': 50}: the
# smallest swept latent at or above each layer's truth
z = est.transform(X[1], layer="1")  # [time, chosen latent] of layer 1
print("latent trajectory of layer 1:", z.shape)
est.plot().savefig("quickstart_sweep.png")
