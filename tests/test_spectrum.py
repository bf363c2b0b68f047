"""The reliable-variance spectrum and FA's shared dimension, against known answers."""

import numpy as np
import pytest

from nmas_jax.data import synthetic
from nmas_jax.evaluation import spectrum


@pytest.mark.parametrize("alpha", [0.7, 1.0, 1.5])
def test_svca_recovers_a_known_power_law_exponent(alpha):
  x = synthetic.power_law_activity(alpha)
  r = spectrum.spectrum(x[:4200], x[4200:], seed=0, bootstrap=20)
  assert abs(r["alpha"] - alpha) < 0.1
  lo, hi = r["alpha_interval"]
  assert lo <= r["alpha"] <= hi
  # The spectrum falls: the first component holds more reliable variance than the twentieth.
  assert r["reliable_variance"][0] > r["reliable_variance"][19] > 0


def test_private_noise_has_no_reliable_variance():
  """Independent neurons: nothing covaries across the two halves, so every component's reliable
  variance is near zero next to the neurons' total variance."""
  x = np.random.default_rng(0).standard_normal((4000, 100))
  r = spectrum.spectrum(x[:3000], x[3000:], bootstrap=0)
  assert max(r["reliable_fraction"]) < 0.01


def test_fa_dshared_counts_the_shared_dimensions():
  """Four shared factors of unequal variance and private noise: the validation likelihood picks
  a model of at least 4 factors and 95% of its shared variance needs 3 or 4 dimensions (the
  weakest factor holds about 4% of it)."""
  rng = np.random.default_rng(1)
  z = rng.standard_normal((3000, 4)) * np.sqrt([8.0, 4.0, 2.0, 0.6])
  x = z @ rng.standard_normal((4, 40)) + rng.standard_normal((3000, 40))
  d = spectrum.fa_dshared(x[:2000], x[2000:], latents=(1, 2, 4, 8))
  assert d["latent"] >= 4 and d["dshared"] in (3, 4)
