"""The model families, as `flax.linen` modules that need only jax and flax.

Each family is a module that also declares what a sweep needs of it (`Family`);
`FAMILIES` maps `--model` names to them. The building blocks (`Encoder`,
`Decoder`, `ScanLSTM`, `ScanGRU`, `Dense`) embed in any Flax model:

  from nmas_jax.models import Encoder
  z_BTK = Encoder(hidden=64, latent=10).apply(params, x_BTN, latent_size=4)
"""

from nmas_jax.models.autoencoder import DECODERS, Decoder, Encoder, LSTMAutoencoder, narrow_neurons
from nmas_jax.models.family import Family, cut_latent, cut_to, param_shapes
from nmas_jax.models.layers import (
  Dense,
  latent_mask,
  per_unit_init,
  scale_latent_inputs,
  update_at,
)
from nmas_jax.models.lfads import LFADS, ScanGRU, lfads_l2
from nmas_jax.models.losses import (
  LIKELIHOODS,
  MAX_LOG_RATE,
  coordinated_dropout,
  elementwise_loss,
  mean_prediction,
  neuron_weighted_loss,
  reconstruction_loss,
  weighted_loss,
)
from nmas_jax.models.lstm import ScanLSTM
from nmas_jax.models.multiscale import (
  MultiscaleAutoencoder,
  band_mask,
  bounded_follow,
  leaky_integrate,
)

# --model name -> family. A new family is a module of its own and one line here.
FAMILIES: dict[str, type[Family]] = {
  "autoencoder": LSTMAutoencoder,
  "lfads": LFADS,
  "multiscale": MultiscaleAutoencoder,
}


def family(name: str) -> type[Family]:
  """The family registered as `name` (ValueError naming the known ones otherwise)."""
  if name not in FAMILIES:
    raise ValueError(f"unknown model {name!r}: choose one of {', '.join(FAMILIES)}")
  return FAMILIES[name]


def make_model(s, neurons: int) -> Family:
  """The padded model every model of a sweep of settings `s` shares (`Family.from_settings`)."""
  return family(s.model).from_settings(s, neurons)


__all__ = [
  "DECODERS",
  "FAMILIES",
  "LIKELIHOODS",
  "MAX_LOG_RATE",
  "LFADS",
  "Decoder",
  "Dense",
  "Encoder",
  "Family",
  "LSTMAutoencoder",
  "MultiscaleAutoencoder",
  "ScanGRU",
  "ScanLSTM",
  "band_mask",
  "bounded_follow",
  "coordinated_dropout",
  "cut_latent",
  "cut_to",
  "elementwise_loss",
  "family",
  "latent_mask",
  "leaky_integrate",
  "lfads_l2",
  "make_model",
  "mean_prediction",
  "narrow_neurons",
  "neuron_weighted_loss",
  "param_shapes",
  "per_unit_init",
  "reconstruction_loss",
  "scale_latent_inputs",
  "update_at",
  "weighted_loss",
]
