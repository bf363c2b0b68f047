"""From a numpy array to the chosen dimension and the plot, on the built-in synthetic data."""

import os

from nmas_jax import DimensionSweep, synthetic

quick = os.environ.get("NMAS_QUICK") == "1"  # CI: tiny settings so the example cannot rot
X = synthetic.make_synthetic(time=400 if quick else 2000).x_LTN        # [layers, time, neurons], true dims 10, 25, 50
est = DimensionSweep(latents=(10, 25, 50, 75, 150), steps=5 if quick else 600).fit(X)
print("chosen dimension per layer:", est.optimal_latent_)        # {'0': 10, '1': 25, '2': 50} after full training
z = est.transform(X[1], layer="1")                               # [time, chosen latent] of layer 1
print("latent trajectory of layer 1:", z.shape)
est.plot().savefig("quickstart_sweep.png")
