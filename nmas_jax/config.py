"""Every setting of a sweep, declared once: default, type, help text and check.

Three frozen dataclasses hold them. `Settings` (model, training, evaluation)
are `DimensionSweep`'s parameters; `DataSettings` say which recording the
command line loads and how; `RunSettings` say where and how a run happens
(workdir, checkpoints, devices). The command line's flags (`define_flags`,
`from_flags`), the flags file (`flags_text`), the workdir's identity
(`identity`) and every check (`__post_init__` -> `_check`) derive from the
declarations here. Adding a setting is one `setting(...)` line plus its use.
"""

from __future__ import annotations

import dataclasses
import functools

from nmas_jax import models
from nmas_jax.declare import (
  Declared,
  setting,
)
from nmas_jax.errors import UserError
from nmas_jax.run_config import (  # noqa: F401  (re-exported: every setting is in config)
  BATCHINGS,
  DATASETS,
  NAN_POLICIES,
  DataSettings,
  RunSettings,
)

MODELS = tuple(models.FAMILIES)
DECODERS = models.DECODERS
LIKELIHOODS = models.LIKELIHOODS
DTYPES = ("float32", "bfloat16")
NORMALIZATIONS = ("zscore", "mean_per_bin", "mean_per_bin_all", "none")
BASELINES = ("pca", "fa", "lds")


def _own_defaults(fam: type) -> dict:
  """A model family's module fields and their defaults (none for a non-dataclass)."""
  return (
    {f.name: f.default for f in dataclasses.fields(fam)} if dataclasses.is_dataclass(fam) else {}
  )


def _family_decoders() -> dict[str, str]:
  """Each family with a decoder field: its module's default decoder."""
  return {n: d for n, fam in models.FAMILIES.items() if (d := _own_defaults(fam).get("decoder"))}


def _module_default(module: type, name: str):
  """The default of a model module's field: a model setting's default is declared there once."""
  return _own_defaults(module)[name]


_AE = functools.partial(_module_default, models.LSTMAutoencoder)
_FAMILY = (
  " Default: the model family's ("
  + "; ".join(
    f"{name}: " + ", ".join(f"{k}={v}" for k, v in fam.training_defaults.items())
    for name, fam in models.FAMILIES.items()
  )
  + ")."
)
_LFADS = functools.partial(_module_default, models.LFADS)


def _pbt(default: tuple[float, float], what: str, rate: bool = False):
  """A --population range setting: low,high of `what`, drawn uniform (rates) or log-uniform."""
  draw = "uniform" if rate else "log-uniform"
  return setting(
    default, f"--population: low,high of {what} ({draw}).", kind="rate_range" if rate else "range"
  )


@dataclasses.dataclass(frozen=True)
class Settings(Declared):
  """Model, training and evaluation settings: `DimensionSweep`'s parameters, and flags of the
  sweep."""

  # The models.
  latents: tuple[int, ...] = setting(
    (10, 25, 50, 75, 150),
    "Comma-separated latent sizes (with "
    "--model=multiscale: latent counts per band, 0 allowed; "
    "every combination is swept).",
    kind="ints",
    example="10,25,50,75,150",
  )
  neuron_counts: tuple[int, ...] = setting(
    (),
    "Comma-separated numbers of held-in neurons: also "
    "sweep each layer subsampled to these many encoder "
    "inputs (nested subsets; the held-out neurons stay the "
    "same), for results.json 'scaling' and scaling.png. Off "
    "when empty.",
    kind="ints",
    example="25,50,100",
  )
  hidden: int = setting(_AE("hidden"), "LSTM units (per direction).", check="positive_int")
  decoder: str = setting(
    None,
    "linear: readout of z_t alone, through the likelihood's link "
    "(the latent size is a linear dimension per time step); mlp: a "
    "per-time-step MLP of z_t (the dimension of a curved manifold); lstm: an "
    "LSTM over z, then a readout. A comma-separated list (e.g. linear,mlp) sweeps each "
    "(one more batched axis; --model=autoencoder): results.json's optimal_latent is the first "
    "listed one's, optimal_latent_by_decoder has each. Default: the model family's ("
    + "; ".join(f"{n}: {d}" for n, d in _family_decoders().items())
    + "; the others have none).",
    choices=DECODERS,
    kind="names",
  )
  decoder_hidden: int = setting(
    _AE("decoder_hidden"), "Hidden units of the mlp decoder.", check="positive_int"
  )
  model: str = setting(
    "autoencoder",
    "autoencoder: the LSTM autoencoder (--hidden, --decoder); "
    "lfads: LFADS (models.LFADS; --gen_dim ... --cd_rate), whose factors are "
    "the swept latents; multiscale: the autoencoder with latents in bands of "
    "fixed time constants (--timescales), every combination of per-band "
    "counts from --latents swept.",
    choices=MODELS,
  )
  timescales: tuple[int, ...] = setting(
    (),
    "--model=multiscale: comma-separated time constants "
    "of the latent bands in time bins (after --bin), e.g. "
    "2,50: a fast and a slow band; each band's latents are "
    "leaky integrators of bounded encoder innovations.",
    kind="ints",
    example="2,50",
  )
  gen_dim: int = setting(_LFADS("gen_dim"), "LFADS: generator GRU units.", check="positive_int")
  ic_enc_dim: int = setting(
    _LFADS("ic_enc_dim"),
    "LFADS: initial-condition encoder GRU units (per direction).",
    check="positive_int",
  )
  ci_enc_dim: int = setting(
    _LFADS("ci_enc_dim"),
    "LFADS: controller-input encoder GRU units (per direction).",
    check="positive_int",
  )
  con_dim: int = setting(_LFADS("con_dim"), "LFADS: controller GRU units.", check="positive_int")
  co_dim: int = setting(
    _LFADS("co_dim"), "LFADS: inferred inputs per time step (0: no controller).", check="nonneg_int"
  )
  kl_ic_scale: float = setting(
    _LFADS("kl_ic_scale"),
    "LFADS: weight of the initial condition's KL (per trial, over the window's elements).",
    check="nonneg",
  )
  kl_co_scale: float = setting(
    _LFADS("kl_co_scale"), "LFADS: weight of the inferred inputs' KL.", check="nonneg"
  )
  l2_gen_scale: float = setting(
    _LFADS("l2_gen_scale"),
    "LFADS: weight of the squared recurrent kernels of the generator and controller.",
    check="nonneg",
  )
  cd_rate: float = setting(
    _AE("cd_rate"),
    "Coordinated dropout rate, every model: input elements hidden "
    "from the encoder at random each step, and held-in neurons scored "
    "only there, so no model can copy its input (Keshtkaran & "
    "Pandarinath 2019).",
    check="[0,1)",
  )
  kl_warmup_steps: int = setting(
    _LFADS("warmup_steps"),
    "LFADS: steps over which the KL and L2 weights rise linearly from 0.",
    check="nonneg_int",
  )
  bidirectional: bool = setting(
    _AE("bidirectional"),
    "Add a reverse-time encoder LSTM, so z_t is inferred from "
    "the whole window (--nobidirectional: from the past only).",
  )
  linear_skip: bool = setting(
    _AE("linear_skip"),
    "Add a linear path from each time step's input to the "
    "latent beside the encoder LSTM (z_t = LSTM(x)_t W + x_t S + b), so "
    "PCA's projection is one setting of the weights away: closer to PCA "
    "on linear-Gaussian data, but the estimate then leans towards PCA's "
    "(docs/notes/2026-11-28-dimension.md). Not used by --model=lfads.",
  )
  likelihood: str = setting(
    "auto",
    "gaussian (MSE), poisson (counts; log-rate readout), or auto: "
    "poisson for non-negative integer data, else gaussian.",
    choices=("auto",) + LIKELIHOODS,
  )
  dtype: str = setting(
    "float32",
    "Matmul dtype: float32, or bfloat16 on GPU/TPU (LSTM state and losses stay float32).",
    choices=DTYPES,
  )
  unroll: int = setting(_AE("unroll"), "Scan unroll factor of the LSTMs.", check="positive_int")
  # Training.
  seeds: int = setting(
    3,
    "Seeds per (layer, latent): seeds 0..N-1. Each seed has its own "
    "initialisation, batch order and held-out neurons.",
    check="positive_int",
  )
  steps: int = setting(
    None,
    "The cap on training steps: a model stops earlier when it has converged "
    "(--stop_tolerance, --stop_patience)." + _FAMILY,
    kind="int",
    check="positive_int",
    identity=False,
  )
  stop_tolerance: float = setting(
    0.01,
    "A model has converged when its best validation score improved by at most this fraction "
    "of its layer's best gain over the null in --stop_patience evaluations (after "
    "--lr_plateau_cuts cuts of its learning rate).",
    check="nonneg",
    identity=False,
  )
  stop_patience: int = setting(
    4,
    "Evaluations (every --log_every steps) a plateau must last; 0: train every model for "
    "--steps, with no learning-rate cut.",
    check="nonneg_int",
    identity=False,
  )
  lr_plateau_cuts: int = setting(
    1,
    "Plateaus on which a model's learning rate is cut (by --lr_plateau_factor) before the next "
    "one stops it.",
    check="nonneg_int",
    identity=False,
  )
  lr_plateau_factor: float = setting(
    0.3, "Learning-rate factor at each plateau cut.", check="(0,1]", identity=False
  )
  population: int = setting(
    1,
    "Population-based training: members per (layer, latent, seed) model, each with its own "
    "learning rate, weight decay, dropout (and --cd_rate when on; LFADS: KL and L2 weights): "
    "member 0 starts from the run's values, the others drawn from the --pbt_* ranges; tuned "
    "every --pbt_every steps by a tournament on the end of the training block; the estimate "
    "uses each group's best member. 1: off.",
    check="positive_int",
  )
  pbt_every: int = setting(
    100, "--population: steps between the members' tournaments.", check="positive_int"
  )
  # --population's ranges: lfads-torch's but weight decay and L2 (docs/population.md).
  pbt_learning_rate: tuple = _pbt((1e-5, 5e-3), "learning rates")
  pbt_weight_decay: tuple = _pbt((1e-5, 1e-1), "AdamW weight decays")
  pbt_dropout: tuple = _pbt((0.0, 0.6), "dropout rates", rate=True)
  pbt_cd_rate: tuple = _pbt((0.01, 0.7), "--cd_rate (tuned when above 0)", rate=True)
  pbt_kl_ic_scale: tuple = _pbt((1e-5, 1e-3), "LFADS's --kl_ic_scale")
  pbt_kl_co_scale: tuple = _pbt((1e-6, 1e-4), "LFADS's --kl_co_scale")
  pbt_l2_gen_scale: tuple = _pbt((1e-6, 1e-2), "LFADS's --l2_gen_scale")
  batch_size: int = setting(None, "Windows per batch." + _FAMILY, kind="int", check="positive_int")
  window: int = setting(50, "Window length in time bins (after --bin).", check="positive_int")
  learning_rate: float = setting(
    None, "AdamW learning rate." + _FAMILY, kind="float", check="positive"
  )
  weight_decay: float = setting(0.0, "AdamW weight decay.", check="nonneg")
  lr_half_life: int = setting(
    None,
    "Steps over which the learning rate halves (exponential decay "
    "from the step count alone, so raising --steps and resuming still "
    "equals a longer run); 0: constant." + _FAMILY,
    kind="int",
    check="nonneg_int",
  )
  dropout: float = setting(
    _AE("dropout"), "Dropout rate on the encoder's input while training.", check="[0,1)"
  )
  clip_norm: float = setting(1.0, "Global gradient-norm clip.", check="positive")
  log_every: int = setting(
    25, "Steps between progress lines and evaluations.", check="positive_int", identity=False
  )
  # Evaluation.
  heldout_neurons: float = setting(
    0.2,
    "Fraction of each layer's neurons hidden from the "
    "encoder and scored by co-smoothing (0 disables).",
    check="[0,1)",
  )
  few_shot_windows: int = setting(
    8,
    "Training windows the few-shot co-smoothing readout is fitted on (latents to held-out "
    "neurons, 5 random draws; Dabholkar & Barak 2025); 0: no few-shot score.",
    check="nonneg_int",
    identity=False,
  )
  neuron_folds: int = setting(
    0,
    "K >= 2: instead of one random --heldout_neurons subset per seed, "
    "K disjoint held-out sets per seed that together cover every neuron "
    "(seeds x K held-out sets, each its own model); 0: off.",
    check="nonneg_int",
  )
  train_fraction: float = setting(0.7, "Leading fraction of time for training.", check="(0,1)")
  valid_fraction: float = setting(
    0.1,
    "Fraction of time after the training block for validation "
    "(choosing the latent size and each model's best step); the rest "
    "is the test block.",
    check="(0,1)",
  )
  normalize: str = setting(
    "zscore",
    "Gaussian data: per neuron with the training block's mean "
    "and std (zscore); per time bin by the mean of the layer's neurons that "
    "no seed holds out (mean_per_bin); by the mean of every neuron of the "
    "recording (mean_per_bin_all, the original NMAs'); or none. Counts under "
    "a Poisson likelihood are never normalised.",
    choices=NORMALIZATIONS,
  )
  gain_fraction: float = setting(
    0.95,
    "Dimension estimate: the smallest latent whose held-out "
    "gain reaches this fraction of every larger latent's.",
    check="(0,1]",
    identity=False,
  )
  bootstrap: int = setting(
    200,
    "Bootstrap resamples (validation time blocks and seeds) for "
    "optimal_latent_interval and the zero-dimension test.",
    check="nonneg_int",
    identity=False,
  )
  baselines: tuple[str, ...] = setting(
    ("pca", "fa"),
    "Comma-separated linear baselines scored "
    "like the model at the same latent sizes: pca, fa, lds "
    "(a linear dynamical system fitted by EM; off by default: "
    "about 40 s more on the main job, docs/notes/2026-11-28-dimension.md).",
    choices=BASELINES,
    kind="list",
    identity=False,
  )
  shuffle_control: bool = setting(
    False,
    "Also sweep a control copy of each layer whose neurons "
    "are circularly shifted in time by their own random offsets.",
  )
  shared_model: bool = setting(
    False,
    "Also train one model per latent size on all layers "
    "together and decode the layer from its latents (decoding.png).",
    identity=False,
  )
  verbose: bool = setting(True, "Print progress lines.", flag=False, identity=False)

  def __post_init__(self):
    """Fills the settings left unset (None) from the model family: its `training_defaults`, and
    its module's own default of a field of the same name (the decoder)."""
    fam = models.FAMILIES.get(self.model, models.Family)
    own = _own_defaults(fam)
    for name, value in {"decoder": own.get("decoder"), **fam.training_defaults}.items():
      if getattr(self, name) is None:
        object.__setattr__(self, name, value)
    super().__post_init__()

  def _check_together(self) -> None:
    error = models.family(self.model).settings_error(self)
    if error:
      raise UserError(error)
    if len(set(self.baselines)) != len(self.baselines):
      raise UserError(
        f"--baselines={','.join(self.baselines)} lists a baseline twice: give each once"
      )
    if self.neuron_folds == 1:
      raise UserError(
        "--neuron_folds=1 would hold out every neuron: use 0 (one random "
        "--heldout_neurons subset per seed) or K >= 2 disjoint folds"
      )
    if self.neuron_folds and self.normalize == "mean_per_bin":
      raise UserError(
        "--normalize=mean_per_bin divides by the neurons that no held-out set "
        "holds out, and --neuron_folds holds out every neuron: use --normalize=zscore"
      )
    if self.train_fraction + self.valid_fraction >= 1:
      raise UserError(
        f"--train_fraction={self.train_fraction} and --valid_fraction="
        f"{self.valid_fraction} leave no test block: their sum must be below 1"
      )

  @property
  def decoders(self) -> tuple[str, ...]:
    """The decoders swept (--decoder's list; empty for a family without a decoder)."""
    return tuple(self.decoder.split(",")) if self.decoder else ()

  @property
  def heldout_sets(self) -> int:
    """How many held-out neuron sets each (layer, latent) is trained on: seeds, times the folds
    with --neuron_folds (set s * K + f is seed s's fold f)."""
    return self.seeds * max(self.neuron_folds, 1)
