"""Multiscale autoencoder: latents in bands of fixed time constants (`MultiscaleAutoencoder`)."""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from nmas_jax.models.autoencoder import LSTMAutoencoder, autoencoder_fields


def band_mask(width: int, counts: Any) -> jax.Array:
  """[bands * width] float mask of a multiscale model: unit j of band b is on when j < counts[b]."""
  counts = jnp.asarray(counts)
  return (jnp.arange(width)[None, :] < counts[:, None]).astype(jnp.float32).reshape(-1)


def leaky_integrate(u_BTK: jax.Array, decay_K: jax.Array) -> jax.Array:
  """z_t = a z_{t-1} + (1 - a) u_t per unit (a = decay_K), starting at z_0 = u_0: each unit a
  leaky integrator of its innovations with time constant -1 / log(a) bins."""
  a_1K = decay_K[None, :]

  def step(z_BK, u_BK):
    z_BK = a_1K * z_BK + (1.0 - a_1K) * u_BK
    return z_BK, z_BK

  u_TBK = jnp.swapaxes(u_BTK, 0, 1)
  _, z_TBK = jax.lax.scan(step, u_TBK[0], u_TBK)
  return jnp.swapaxes(z_TBK, 0, 1)


def bounded_follow(v_BTK: jax.Array, decay_K: jax.Array) -> jax.Array:
  """Leaky integrators whose bounded innovations step toward the encoder's proposal v:
  z_0 = tanh(v_0), z_t = a z_{t-1} + (1 - a) u_t with u_t = tanh((v_t - a z_{t-1}) / (1 - a)).

  The same trajectories as `leaky_integrate` of innovations in [-1, 1] (|u_t| <= 1, so a unit
  moves at most 2 (1 - a) per bin), but where the unit can keep up, z_t is about v_t: the
  encoder says where a unit should be rather than how fast it should move, so a slow unit's
  gradient does not pass through the factor 1 - a."""
  a_1K = decay_K[None, :]

  def step(z_BK, v_BK):
    z_BK = a_1K * z_BK + (1.0 - a_1K) * jnp.tanh((v_BK - a_1K * z_BK) / (1.0 - a_1K))
    return z_BK, z_BK

  v_TBK = jnp.swapaxes(v_BTK, 0, 1)
  z0_BK = jnp.tanh(v_TBK[0])
  _, z_TBK = jax.lax.scan(step, z0_BK, v_TBK[1:])
  return jnp.swapaxes(jnp.concatenate([z0_BK[None], z_TBK], axis=0), 0, 1)


class MultiscaleAutoencoder(LSTMAutoencoder):
  """The autoencoder with latents in bands of fixed time constants: x [B, T, N] -> (y [B, T, N],
  z [B, T, bands * latent]).

  Band b's units are leaky integrators with time constant `timescales[b]` bins of bounded
  innovations (in [-1, 1]), so a unit moves at most 2 (1 - a) of its range per bin (about
  2 / tau) and a slow unit cannot follow fast changes. The encoder proposes where each unit
  should be and the innovation is the bounded step toward it (`bounded_follow`): proposing
  the innovations themselves (`leaky_integrate` of tanh) made a slow unit's gradient pass
  through 1 - a, and slow units trained far worse than fast ones
  (docs/notes/2026-11-28-dimension.md).
  `latent` is each band's padded width; `latent_size` [bands] masks band b to its first
  counts[b] units (a padded model equals an unpadded one). The decoder reads all bands' units.
  """

  timescales: tuple[int, ...] = (2, 50)
  decoder: str = "linear"  # the decoder its validation used (docs/validation.md)

  def encoder_width(self) -> int:
    return self.latent * len(self.timescales)

  def latent_bands(self) -> int:
    return len(self.timescales)

  def encode(self, x_BTN: jax.Array, latent_size: Any = None) -> jax.Array:
    counts = (
      jnp.full(len(self.timescales), self.latent)
      if latent_size is None
      else jnp.asarray(latent_size)
    )
    decay_K = jnp.repeat(jnp.exp(-1.0 / jnp.asarray(self.timescales, jnp.float32)), self.latent)
    z_BTK = bounded_follow(self.encoder(x_BTN), decay_K)
    return z_BTK * band_mask(self.latent, counts)[None, None, :]

  # The family interface (`Family`): the latent size is a vector, one count per band.
  cuts_latent: ClassVar[bool] = False
  decoder_axis: ClassVar[bool] = False

  @classmethod
  def from_settings(cls, s: Any, neurons: int) -> MultiscaleAutoencoder:
    return cls(timescales=tuple(s.timescales), **autoencoder_fields(s, neurons))

  @classmethod
  def settings_error(cls, s: Any) -> str | None:
    if not s.timescales:
      return (
        "--model=multiscale needs --timescales, the bands' time constants in bins, "
        "e.g. --timescales=2,50"
      )
    if max(s.latents) == 0:
      return f"--latents={','.join(map(str, s.latents))} has no positive band count"
    if s.neuron_counts:
      return "--neuron_counts is not built for --model=multiscale: drop one of them"
    if len(s.decoders) > 1:
      return f"--decoder={s.decoder} lists several decoders: --model=multiscale takes one"
    return None

  @classmethod
  def sweep_bands(cls, s: Any) -> int:
    return len(s.timescales)

  @classmethod
  def describe(cls, config: dict[str, Any]) -> str:
    taus = ", ".join(map(str, config["timescales"]))
    return (
      f"- model: LSTM encoder ({config['hidden']} units) -> latents in bands of tau "
      f"{taus} bins -> {config['decoder']} decoder"
    )

  def narrows(self) -> bool:
    return False

  def used_units(self, latent: Any) -> jax.Array:
    return band_mask(self.latent, latent)
