"""What the sweep pipeline needs of a model family, declared in one place.

Every family (`LSTMAutoencoder`, `MultiscaleAutoencoder`, `LFADS`) is a `flax.linen` module
that also subclasses `Family`. The training loop, the by-latent CPU path, evaluation, the
report and the benchmark ask a model only what is declared here; none of them asks which
family a model is. Adding a family is a module beside this one and one line in
`nmas_jax.models.FAMILIES`.

`s` below is any object with the sweep's settings as attributes (`nmas_jax.config.Settings`
is one); nothing here imports the settings or the command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

from nmas_jax.models.layers import latent_mask


@dataclasses.dataclass(frozen=True)
class Tuned:
  """A hyper-parameter that population-based training tunes per member: the setting holding its
  range (low, high), its explore weight w (a loser's value is multiplied by 1 +/- U(0.002 w, w))
  and whether it is drawn log-uniform (else uniform)."""

  range: str
  weight: float
  log: bool = True


class Family:
  """The family interface (a mixin of the flax module; defaults fit a scalar latent size)."""

  # Params path of the Dense that maps to the neurons: its bias starts at the null prediction.
  readout_path: ClassVar[tuple[str, ...]] = ("readout",)
  # Whether a model of latent size k equals the padded model cut to width k (`cut_latent`): what
  # the by-latent CPU path needs. False where the latent size is a vector (bands).
  cuts_latent: ClassVar[bool] = True
  # The training settings this family trains well with: `config.Settings` takes each one the
  # user leaves unset (None) from here, and results.json records the values used.
  # Whether a list of decoders (--decoder=linear,mlp) can be swept as one more axis.
  decoder_axis: ClassVar[bool] = False
  training_defaults: ClassVar[dict[str, Any]] = dict(
    learning_rate=3e-3, batch_size=16, lr_half_life=0, steps=3000
  )

  @classmethod
  def from_settings(cls, s: Any, neurons: int) -> Family:
    """The padded model every model of a sweep of `s` shares (width: the largest latent)."""
    raise NotImplementedError

  @classmethod
  def settings_error(cls, s: Any) -> str | None:
    """What is wrong with `s` for this family (a one-line message), or None."""
    if 0 in s.latents:
      return (
        "--latents has 0: latent sizes must be positive integers (0 is a band count of "
        "--model=multiscale only)"
      )
    if s.timescales:
      return (
        f"--timescales sets the bands of --model=multiscale; it has no effect with "
        f"--model={s.model}: drop it"
      )
    if len(s.decoders) > 1 and not cls.decoder_axis:
      return f"--decoder={s.decoder} lists several decoders: only --model=autoencoder sweeps a list"
    return None

  @classmethod
  def tuned(cls, s: Any) -> dict[str, Tuned]:
    """The model fields a population (`--population`) tunes per member, by field name: each
    member trains as `model.clone(**its values)` (`train.train_step`), so the module must accept
    a traced value in each (`layers.Dropout`). A regulariser the run leaves off (its setting 0)
    stays off. Rates: lfads-torch's ranges and weights (scripts/run_pbt.py)."""
    out = {}
    if s.dropout > 0:
      out["dropout"] = Tuned("pbt_dropout", 0.3, log=False)
    if s.cd_rate > 0:
      out["cd_rate"] = Tuned("pbt_cd_rate", 0.3, log=False)
    return out

  @classmethod
  def sweep_bands(cls, s: Any) -> int:
    """Columns of a model's latent size in the models table: 0 for a scalar size."""
    del s
    return 0

  @classmethod
  def describe(cls, config: dict[str, Any]) -> str:
    """The report's line on the model, from results.json's `config`."""
    raise NotImplementedError

  @classmethod
  def step_flops(cls, s: Any, neurons: int, batch: int, window: int) -> float:
    """Useful FLOPs of one training step (forward + backward) of one layer's models of one seed,
    one per latent size of `s.latents`, reading `neurons` neurons."""
    raise NotImplementedError

  def readout_paths(self) -> list[tuple[str, ...]]:
    """Params paths of every Dense that maps to the neurons (one per decoder)."""
    return [self.readout_path]

  def latent_total(self, latent: Any) -> Any:
    """How many latent units a model of per-model argument `latent` uses (summed over bands)."""
    return jnp.sum(jnp.asarray(latent))

  def used_units(self, latent: Any) -> jax.Array:
    """[width] mask of the latent units (of z) that a model of argument `latent` uses."""
    return latent_mask(self.latent, self.latent_total(latent))

  def for_part(self, key: tuple[int, ...]) -> Family:
    """This model for one part of the by-latent path, whose models all have the per-model
    argument `key` (a `ModelTable.model_latent` row) and run cut to width key[0]."""
    del key
    return self

  def narrows(self) -> bool:
    """Whether the by-latent path may run a --neuron_counts model on its own neurons only
    (`narrowed`)."""
    return False

  def narrowed(self, params: Any, in_I: jax.Array, out_O: jax.Array) -> tuple[Any, Any]:
    """(module, params) of this model cut to the neurons it reads and predicts."""
    raise NotImplementedError

  def train_output(
    self, params: Any, x_in_BTN: jax.Array, latent: Any, step: jax.Array, rngs: dict[str, jax.Array]
  ) -> tuple[jax.Array, jax.Array | None]:
    """(output y [B, T, N], extra loss term or None) in training mode; `step` drives warm-ups."""
    del step
    y_BTN, _ = self.apply({"params": params}, x_in_BTN, latent, train=True, rngs=rngs)
    return y_BTN, None


def param_shapes(model: Any, latent: int | None = None) -> Any:
  """Abstract params (shapes, dtypes) of `model`, at latent width `latent` when given."""
  m = model if latent is None else model.clone(latent=latent)
  x = jax.ShapeDtypeStruct((1, 1, m.neurons), jnp.float32)
  return jax.eval_shape(m.init, jax.random.PRNGKey(0), x)["params"]


def cut_to(tree: Any, like: Any, lead: int = 0) -> Any:
  """`tree` with every leaf cut to the leading slice of the shape of its twin in `like`; the first
  `lead` axes (e.g. models) are kept whole.

  The one latent cut: a padded model's units >= k are masked and its latent units are drawn one
  by one (`per_unit_init`), so the leading slice at width k is a width-k model.
  """
  cut = lambda a, t: a[(slice(None),) * lead + tuple(slice(0, n) for n in t.shape)]
  return jax.tree.map(cut, tree, like)


def cut_latent(model: Any, params: Any, k: int) -> Any:
  """Params of a padded `model` cut to latent width k: those of `model.clone(latent=k)`."""
  return cut_to(params, param_shapes(model, k))
