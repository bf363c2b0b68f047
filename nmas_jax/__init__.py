"""nmas-jax: how many dimensions does a neural population use? Batched latent sweeps in JAX.

The public names below load on first use, so that `import nmas_jax.models` (the Flax modules)
loads nothing of the estimator, its settings or the command line.
"""

import importlib

_EXPORTS = {
  "DimensionSweep": "nmas_jax.api",
  "Settings": "nmas_jax.config",
  "Dataset": "nmas_jax.data",
  "UserError": "nmas_jax.errors",
  "LSTMAutoencoder": "nmas_jax.models",
  "Encoder": "nmas_jax.models",
  "Decoder": "nmas_jax.models",
  "ScanLSTM": "nmas_jax.models",
  "Dense": "nmas_jax.models",
}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module 'nmas_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(list(globals()) + __all__)
