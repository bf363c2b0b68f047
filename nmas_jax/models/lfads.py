"""LFADS (Sussillo et al. 2016; Pandarinath et al. 2018), as lfads-torch builds it."""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from nmas_jax.models.family import Family, Tuned
from nmas_jax.models.layers import Dense, Dropout, latent_mask, per_unit_init, rate_on


class _GRUStep(nn.Module):
  """One GRU step given the input's precomputed gate pre-activations [B, 3H] (r, z, n), with the
  hidden state clipped to +-clip (lfads-torch's ClippedGRUCell, no recurrent bias)."""

  features: int
  clip: float = 5.0

  @nn.compact
  def __call__(self, h_BH: jax.Array, gx_BG: jax.Array) -> tuple[jax.Array, jax.Array]:
    gh_BG = Dense(3 * self.features, use_bias=False, name="recurrent")(h_BH)
    xr, xz, xn = jnp.split(gx_BG, 3, axis=-1)
    hr, hz, hn = jnp.split(gh_BG, 3, axis=-1)
    r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
    h = z * h_BH + (1.0 - z) * jnp.tanh(xn + r * hn)
    h = jnp.clip(h, -self.clip, self.clip)
    return h, h


class ScanGRU(nn.Module):
  """A GRU over time, x [B, T, D] -> (h [B, T, H], last h [B, H]): the input projection is one
  matmul over all time steps, only h -> 3H runs inside `nn.scan`."""

  features: int
  reverse: bool = False
  clip: float = 5.0

  @nn.compact
  def __call__(self, x_BTD: jax.Array, h0_BH: jax.Array | None = None):
    gx_BTG = Dense(3 * self.features, name="input")(x_BTD)
    h0 = jnp.zeros((x_BTD.shape[0], self.features), gx_BTG.dtype) if h0_BH is None else h0_BH
    scan = nn.scan(
      _GRUStep,
      variable_broadcast="params",
      split_rngs={"params": False},
      in_axes=1,
      out_axes=1,
      reverse=self.reverse,
    )
    h_last, h_BTH = scan(self.features, self.clip, name="cell")(h0, gx_BTG)
    return h_BTH, h_last


def _gaussian_kl(mean, logvar, prior_mean, prior_logvar) -> jax.Array:
  """KL(N(mean, e^logvar) || N(prior_mean, e^prior_logvar)), summed over the last axis."""
  return 0.5 * jnp.sum(
    prior_logvar
    - logvar
    + (jnp.exp(logvar) + (mean - prior_mean) ** 2) / jnp.exp(prior_logvar)
    - 1.0,
    axis=-1,
  )


def _sample(module: nn.Module, mean, logvar, sample: bool):
  if not sample:
    return mean
  return mean + jnp.exp(0.5 * logvar) * jax.random.normal(module.make_rng("sample"), mean.shape)


def _ar1_kl(module: nn.Module, u_BTC, mean_BTC, logvar_BTC) -> jax.Array:
  """KL [B] of the controller's inferred inputs from an autoregressive AR(1) prior per channel
  (lfads-torch's default; its time constant tau and process variance are parameters of
  `module`): a one-sample estimate log q(u) - log p(u), summed over time (u before the first
  step: 0). Outside the generator's scan: nothing here feeds the next step."""
  c = u_BTC.shape[-1]
  log_tau = module.param("ar_log_tau", nn.initializers.constant(jnp.log(10.0)), (c,))
  log_var = module.param("ar_log_var", nn.initializers.constant(jnp.log(0.1)), (c,))
  alpha = jnp.exp(-1.0 / jnp.exp(log_tau))[None, None, :]
  prior_logvar = (log_var + jnp.log1p(-(alpha[0, 0] ** 2)))[None, None, :]  # innovation variance
  u_prev = jnp.pad(u_BTC[:, :-1], ((0, 0), (1, 0), (0, 0)))
  log_q = -0.5 * jnp.sum(logvar_BTC + (u_BTC - mean_BTC) ** 2 / jnp.exp(logvar_BTC), axis=-1)
  log_p = -0.5 * jnp.sum(prior_logvar + (u_BTC - alpha * u_prev) ** 2 / jnp.exp(prior_logvar), -1)
  return jnp.sum(log_q - log_p, axis=1)


class _LFADSStep(nn.Module):
  """One time step of the controller (optional) and the generator; factors masked to width k."""

  gen_dim: int
  con_dim: int
  co_dim: int
  latent: int
  clip: float

  @nn.compact
  def __call__(self, carry, step_in, mask_K: jax.Array):
    g, c, f, u_prev = carry  # generator, controller, factors [B, K], inputs
    # This step's controller gate inputs [B, 3C], posterior noise [B, C] and generator dropout
    # multipliers [B, G], drawn before the scan (None when not sampling).
    gci_BG, eps_BC, drop_BG = step_in
    if self.co_dim:
      gates = gci_BG + Dense(
        3 * self.con_dim, use_bias=False, kernel_init=per_unit_init(0), name="con_from_factors"
      )(f)
      c, _ = _GRUStep(self.con_dim, self.clip, name="controller")(c, gates)
      mean, logvar = jnp.split(Dense(2 * self.co_dim, name="co_posterior")(c), 2, axis=-1)
      u = mean if eps_BC is None else mean + jnp.exp(0.5 * logvar) * eps_BC
      gen_in = u
    else:
      u = u_prev
      gen_in = jnp.zeros(g.shape[:1] + (1,), g.dtype)
    g, _ = _GRUStep(self.gen_dim, self.clip, name="generator")(
      g, Dense(3 * self.gen_dim, name="gen_input")(gen_in)
    )
    g_drop = g if drop_BG is None else g * drop_BG
    f = (
      Dense(self.latent, use_bias=False, kernel_init=per_unit_init(-1), name="factors")(g_drop)
      * mask_K[None, :]
    )
    posterior = (u, mean, logvar) if self.co_dim else ()  # the KL is computed after the scan
    return (g, c, f, u), (f, posterior)


class LFADS(Family, nn.Module):
  """LFADS: a bidirectional GRU encoder infers the generator's initial condition, an optional
  controller GRU infers inputs of size `co_dim`, a generator GRU unrolls, and factors of width
  `latent` (masked to `latent_size`, so a padded model equals an unpadded one) are read out to
  log-rates (Poisson) or means (Gaussian): y [B, T, N]. Dropout (rate `dropout`) acts on the
  encoders' inputs and outputs and the generator state before the factors (as lfads-torch; not
  on the initial condition, which would perturb the whole generated trajectory), never on a
  factor-width tensor, so padding changes no random draw.

  `__call__(x_BTN, latent_size=None, sample=False) -> (y_BTN, factors_BTK)`. With `sample`
  (or `train`, as the sweep's train step calls models),
  the posteriors are sampled (rng stream "sample") and dropout is on (stream "dropout"). The KL
  terms are sown into the "losses" collection (`kl_ic` [B], `kl_co` [B]; apply with
  `mutable=["losses"]`); `lfads_l2` gives the recurrent-kernel penalty and
  `coordinated_dropout` the input/loss masks of coordinated dropout.
  """

  # What recovers 3 factors with rates_r2 >= 0.9 on --dataset=lorenz_trials (docs/models.md).
  training_defaults: ClassVar[dict[str, Any]] = {
    **Family.training_defaults,
    **dict(learning_rate=5e-3, batch_size=32, lr_half_life=2000, steps=4000),
  }

  neurons: int
  latent: int
  gen_dim: int = 64
  ic_enc_dim: int = 64
  ci_enc_dim: int = 32
  con_dim: int = 32
  co_dim: int = 2
  dropout: float = 0.2
  clip: float = 5.0
  # Training penalties (read by `penalty` and by `train.train_step`).
  kl_ic_scale: float = 1e-4
  kl_co_scale: float = 1e-4
  l2_gen_scale: float = 1e-4
  cd_rate: float = 0.0
  warmup_steps: int = 100

  def latent_inputs(self) -> list[tuple[str, ...]]:
    """Paths of the kernels whose input axis is the factors (see `scale_latent_inputs`)."""
    return [("readout",)] + ([("decoder", "con_from_factors")] if self.co_dim else [])

  def penalty(
    self, params: Any, losses: dict[str, Any], step: jax.Array, elements: int
  ) -> jax.Array:
    """KL (mean over trials) and L2 terms per data element, weighted, with linear warm-up."""
    ramp = jnp.minimum(1.0, (step + 1.0) / max(self.warmup_steps, 1))
    kl = (
      self.kl_ic_scale * jnp.mean(losses["kl_ic"][0])
      + self.kl_co_scale * jnp.mean(losses["kl_co"][0])
    ) / elements
    return ramp * (kl + self.l2_gen_scale * lfads_l2(params))

  @nn.compact
  def __call__(
    self, x_BTN: jax.Array, latent_size: Any = None, sample: bool = False, train: bool = False
  ):
    sample = sample or train
    b, t, _ = x_BTN.shape
    mask_K = latent_mask(self.latent, self.latent if latent_size is None else latent_size)
    drop = Dropout(self.dropout, deterministic=not sample)
    x = drop(x_BTN)
    _, fwd = ScanGRU(self.ic_enc_dim, clip=self.clip, name="ic_enc_fwd")(x)
    _, bwd = ScanGRU(self.ic_enc_dim, reverse=True, clip=self.clip, name="ic_enc_bwd")(x)
    ic_mean, ic_logvar = jnp.split(
      Dense(2 * self.gen_dim, name="ic_posterior")(drop(jnp.concatenate([fwd, bwd], axis=-1))),
      2,
      axis=-1,
    )
    prior_mean = self.param("ic_prior_mean", nn.initializers.zeros_init(), (self.gen_dim,))
    prior_logvar = self.param(
      "ic_prior_logvar", nn.initializers.constant(jnp.log(0.1)), (self.gen_dim,)
    )
    self.sow(
      "losses", "kl_ic", _gaussian_kl(ic_mean, ic_logvar, prior_mean[None], prior_logvar[None])
    )
    g0 = _sample(self, ic_mean, ic_logvar, sample)  # no dropout: it would move the whole trajectory
    if self.co_dim:
      ci_f, _ = ScanGRU(self.ci_enc_dim, clip=self.clip, name="ci_enc_fwd")(x)
      ci_b, _ = ScanGRU(self.ci_enc_dim, reverse=True, clip=self.clip, name="ci_enc_bwd")(x)
      ci = drop(jnp.concatenate([ci_f, ci_b], axis=-1))
      gci_BTG = Dense(3 * self.con_dim, name="con_input")(ci)
    else:
      gci_BTG = jnp.zeros((b, t, 3), x.dtype)
    # Randomness of the generator's steps, drawn before the scan in one call each (as wide as
    # the controller's outputs and the generator, never the factors): the scan then holds only
    # what depends on the previous step.
    eps_BTC = drop_BTG = None
    if sample and self.co_dim:
      eps_BTC = jax.random.normal(self.make_rng("sample"), (b, t, self.co_dim), x.dtype)
    if sample and rate_on(self.dropout):  # dropout's multipliers: 0 or 1 / (1 - rate)
      drop_BTG = Dropout(self.dropout)(jnp.ones((b, t, self.gen_dim), x.dtype), False)
    step = nn.scan(
      _LFADSStep,
      variable_broadcast="params",
      split_rngs={"params": False},
      in_axes=(1, nn.broadcast),
      out_axes=1,
    )
    carry = (
      g0,
      jnp.zeros((b, self.con_dim), x.dtype),
      jnp.zeros((b, self.latent), x.dtype),
      jnp.zeros((b, max(self.co_dim, 1)), x.dtype),
    )
    _, (f_BTK, posterior) = step(
      self.gen_dim,
      self.con_dim,
      self.co_dim,
      self.latent,
      self.clip,
      name="decoder",
    )(carry, (gci_BTG, eps_BTC, drop_BTG), mask_K)
    kl_B = _ar1_kl(self, *posterior) if self.co_dim else jnp.zeros((b,), x.dtype)
    self.sow("losses", "kl_co", kl_B)
    y_BTN = Dense(self.neurons, kernel_init=per_unit_init(0), name="readout")(f_BTK)
    return y_BTN, f_BTK

  # The family interface (`Family`).
  @classmethod
  def from_settings(cls, s: Any, neurons: int) -> LFADS:
    return cls(
      neurons=neurons,
      latent=max(s.latents),
      gen_dim=s.gen_dim,
      ic_enc_dim=s.ic_enc_dim,
      ci_enc_dim=s.ci_enc_dim,
      con_dim=s.con_dim,
      co_dim=s.co_dim,
      dropout=s.dropout,
      kl_ic_scale=s.kl_ic_scale,
      kl_co_scale=s.kl_co_scale,
      l2_gen_scale=s.l2_gen_scale,
      cd_rate=s.cd_rate,
      warmup_steps=s.kl_warmup_steps,
    )

  @classmethod
  def tuned(cls, s: Any) -> dict[str, Tuned]:
    """Rates as every family; the KL and L2 weights as AutoLFADS (weight 0.8)."""
    out = super().tuned(s) | {
      "kl_ic_scale": Tuned("pbt_kl_ic_scale", 0.8),
      "l2_gen_scale": Tuned("pbt_l2_gen_scale", 0.8),
    }
    if s.co_dim:
      out["kl_co_scale"] = Tuned("pbt_kl_co_scale", 0.8)
    return out

  @classmethod
  def describe(cls, config: dict[str, Any]) -> str:
    return (
      f"- model: LFADS (generator {config['gen_dim']} units, controller outputs "
      f"{config['co_dim']}) -> factors"
    )

  @classmethod
  def step_flops(cls, s: Any, neurons: int, batch: int, window: int) -> float:
    """The bidirectional initial-condition encoder GRU on the neurons (input projection: forward
    + weight gradient), the generator GRU, the factors and the readout, at each factor count k;
    with a controller (`co_dim`), its bidirectional encoder, its GRU and its links too."""
    bt, e, g, n = batch * window, s.ic_enc_dim, s.gen_dim, neurons
    encoder = lambda d: 2 * (2 * bt * n * 3 * d * 2) + 2 * (2 * bt * d * 3 * d * 3)  # 2 directions
    per = encoder(e) + 2 * bt * g * 3 * g * 3  # and the generator's recurrence
    con = lambda k: 0
    if getattr(s, "co_dim", 0):
      c, u, co = s.ci_enc_dim, s.con_dim, s.co_dim
      per += encoder(c) + 2 * bt * 2 * c * 3 * u * 3 + 2 * bt * u * 3 * u * 3
      per += 2 * bt * u * 2 * co * 3 + 2 * bt * co * 3 * g * 3  # posterior, generator input
      con = lambda k: 2 * bt * k * 3 * u * 3  # factors back to the controller
    return sum(per + con(k) + 2 * bt * g * k * 3 + 2 * bt * k * n * 3 for k in s.latents)

  def train_output(
    self, params: Any, x_in_BTN: jax.Array, latent: Any, step: jax.Array, rngs: dict[str, jax.Array]
  ) -> tuple[jax.Array, jax.Array]:
    """Sampled output and the KL and L2 penalty (with warm-up), per data element."""
    (y_BTN, _), aux = self.apply(
      {"params": params}, x_in_BTN, latent, train=True, rngs=rngs, mutable=["losses"]
    )
    return y_BTN, self.penalty(params, aux["losses"], step, x_in_BTN[0].size)


def lfads_l2(params: Any) -> jax.Array:
  """Sum of squares of the generator's and controller's recurrent kernels (the L2 penalty)."""
  dec = params["decoder"]
  total = jnp.sum(dec["generator"]["recurrent"]["kernel"] ** 2)
  if "controller" in dec:
    total += jnp.sum(dec["controller"]["recurrent"]["kernel"] ** 2)
  return total
