"""A real recording: songbird HVC calcium imaging (Mackevicius et al. 2019, 75 neurons, 30 Hz).

See data/mackevicius_hvc.txt for provenance and licence. Default preprocessing
suits such data: each neuron z-scored with its training-block statistics, and
the one neuron that never fires is dropped (with a note). No time binning.
"""

import os

import numpy as np

from nmas_jax import DimensionSweep

quick = os.environ.get("NMAS_QUICK") == "1"
here = os.path.dirname(os.path.abspath(__file__))
x_TN = np.load(os.path.join(here, "data", "mackevicius_hvc.npz"))[
  "activity"
]  # [666 time, 75 neurons]
est = DimensionSweep(
  latents=(1, 2, 4, 8, 16),
  window=25,
  hidden=32,
  seeds=1 if quick else 3,
  steps=5 if quick else 800,
  learning_rate=1e-2,
)
workdir = os.path.join("runs", "hvc_quick" if quick else "hvc")
est.fit(x_TN, workdir=workdir)
print(
  "chosen dimension:", est.optimal_latent_["0"], "| report:", os.path.join(workdir, "report.md")
)
