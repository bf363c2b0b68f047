"""Settings: declared once; flags, estimator parameters, identity and checks all derive from
them."""

import dataclasses
import os

import pytest
from absl import flags

from nmas_jax import DimensionSweep, declare, models
from nmas_jax.config import DataSettings, RunSettings, Settings
from nmas_jax.errors import UserError

# The sweep's public flags and defaults (a spec; seeds, train_fraction, normalize, steps, hidden,
# bidirectional and dropout changed by the dimension-estimate issue, which added valid_fraction,
# decoder_hidden, dropout and bootstrap; the converged-training issue made steps a cap, added the
# stopping rule and left steps, batch_size and learning_rate to the model family: None).
PUBLIC_DEFAULTS = {
  "latents": "10,25,50,75,150",
  "dataset": "synthetic",
  "data_path": "",
  "data_key": None,
  "layers": [],
  "seeds": 3,
  "valid_fraction": 0.1,
  "decoder_hidden": 128,
  "bootstrap": 200,
  "dropout": 0.2,
  "steps": None,
  "stop_tolerance": 0.01,
  "stop_patience": 4,
  "lr_plateau_cuts": 1,
  "lr_plateau_factor": 0.3,
  "batch_size": None,
  "window": 50,
  "hidden": 64,
  "learning_rate": None,
  "lr_half_life": None,
  "weight_decay": 0.0,
  "clip_norm": 1.0,
  "decoder": None,
  "bidirectional": True,
  "likelihood": "auto",
  "heldout_neurons": 0.2,
  "gain_fraction": 0.95,
  "shuffle_control": False,
  "dtype": "float32",
  "nwb_series": None,
  "bin_ms": 50.0,
  "batching": "auto",
  "mesh": "auto",
  "distributed": False,
  "coordinator_address": None,
  "num_processes": None,
  "process_id": None,
  "shared_model": False,
  "train_fraction": 0.7,
  "normalize": "zscore",
  "bin": 2,
  "neurons_per_layer": None,
  "data_seed": 0,
  "workdir": "runs/sweep",
  "log_every": 25,
  "checkpoint_every": 100,
  "keep_checkpoints": 3,
  "overwrite": False,
  "nan_policy": "freeze",
}


def _flags(*argv):
  fv = flags.FlagValues()
  declare.define_flags(Settings, DataSettings, RunSettings, flag_values=fv)
  fv(["prog", *argv])
  return fv


def test_flags_are_generated_with_the_public_names_and_defaults():
  fv = _flags()
  for name, default in PUBLIC_DEFAULTS.items():
    assert fv[name].default == default, name
  declared = {
    f.name
    for c in (Settings, DataSettings, RunSettings)
    for f in declare.fields(c)
    if f.metadata["flag"]
  }
  assert set(fv) >= declared and declared >= set(PUBLIC_DEFAULTS)
  assert "unroll" in declared  # once only a SweepConfig field, settable nowhere else


def test_unset_training_settings_come_from_the_model_family_and_flags_override_them():
  """Settings left None take the family's `training_defaults` (LFADS' differ from the
  autoencoder's); a value given explicitly wins; the estimator keeps None until it builds
  Settings, so DimensionSweep(model="lfads") trains with LFADS' defaults."""
  ae, lfads = models.LSTMAutoencoder.training_defaults, models.LFADS.training_defaults
  assert ae != lfads
  for model, want in (("autoencoder", ae), ("lfads", lfads)):
    s = Settings(model=model)
    assert {k: getattr(s, k) for k in want} == want
  assert Settings(model="lfads", learning_rate=1e-4).learning_rate == 1e-4
  assert DimensionSweep(model="lfads").config().batch_size == lfads["batch_size"]
  cfg = declare.from_flags(Settings, _flags("--model=lfads", "--steps=7"))
  assert (cfg.steps, cfg.learning_rate) == (7, lfads["learning_rate"])


def test_flags_estimator_and_defaults_are_one_declaration():
  fv = _flags("--latents=2,4", "--unroll=2", "--decoder=lstm", "--layers=a,b")
  cfg = declare.from_flags(Settings, fv)
  assert cfg == Settings(latents=(2, 4), unroll=2, decoder="lstm")
  assert declare.from_flags(DataSettings, fv).layers == ("a", "b")
  est = DimensionSweep(latents=(2, 4), unroll=2, decoder="lstm")
  assert est.config() == cfg and set(est.get_params()) == set(declare.names(Settings))
  assert models.make_model(cfg, 8).unroll == 2


def test_flags_text_repeats_the_run():
  cfg, ds = Settings(latents=(3, 1), seeds=2, shuffle_control=True), DataSettings(layers=("0",))
  run = RunSettings(workdir="w", overwrite=True, distributed=True)
  text = declare.flags_text(cfg, ds, run)
  assert "--overwrite" not in text and "--distributed" not in text  # not recorded: run-only
  fv = _flags(*text.split())
  assert declare.from_flags(Settings, fv) == dataclasses.replace(cfg, verbose=True)
  assert declare.from_flags(DataSettings, fv) == ds
  assert declare.from_flags(RunSettings, fv) == RunSettings(workdir="w")


def test_identity_holds_exactly_the_settings_that_define_a_sweep(tmp_path):
  ds = DataSettings(dataset="array", data_path="x.npy")
  ident = declare.identity(Settings(), ds)
  assert ident["data_path"] == os.path.abspath("x.npy") and ident["latents"] == [
    10,
    25,
    50,
    75,
    150,
  ]
  assert not {"steps", "log_every", "gain_fraction", "verbose", "shared_model", "bootstrap"} & set(
    ident
  )
  assert {"unroll", "seeds", "bin", "normalize", "data_seed", "valid_fraction"} <= set(ident)
  assert declare.identity(Settings(steps=5, log_every=1), ds) == ident
  assert declare.identity(Settings(unroll=2), ds) != ident


@pytest.mark.parametrize(
  "make, message",
  [
    (lambda: Settings(seeds=0), "--seeds must be a positive integer, got 0"),
    (lambda: Settings(learning_rate=-1.0), "--learning_rate must be positive, got -1.0"),
    (lambda: Settings(weight_decay=-0.1), "--weight_decay must be >= 0, got -0.1"),
    (lambda: Settings(heldout_neurons=1.0), "--heldout_neurons must be in [0, 1), got 1.0"),
    (lambda: Settings(train_fraction=0.0), "--train_fraction must be in (0, 1), got 0.0"),
    (
      lambda: Settings(dtype="float16"),
      "unknown --dtype='float16': choose one of float32, bfloat16",
    ),
    (lambda: Settings(latents="3,x"), "--latents has 'x', not an integer"),
    (
      lambda: Settings(normalize="l2"),
      "unknown --normalize='l2': choose one of zscore, mean_per_bin, mean_per_bin_all, none",
    ),
    (
      lambda: Settings(baselines=("pca", "gp")),
      "unknown --baselines='gp': choose one of pca, fa, lds",
    ),
    (lambda: Settings(baselines=("fa", "fa")), "--baselines=fa,fa lists a baseline twice"),
    (
      lambda: Settings(train_fraction=0.8, valid_fraction=0.2),
      "--train_fraction=0.8 and --valid_fraction=0.2 leave no test block",
    ),
    (lambda: Settings(neuron_folds=1), "--neuron_folds=1 would hold out every neuron: use 0"),
    (
      lambda: Settings(neuron_folds=3, normalize="mean_per_bin"),
      "--normalize=mean_per_bin divides by the neurons that no held-out set holds out, and "
      "--neuron_folds holds out every neuron: use --normalize=zscore",
    ),
    (lambda: DataSettings(neurons_per_layer=0), "--neurons_per_layer must be a positive integer"),
    (
      lambda: RunSettings(keep_checkpoints=0),
      "--keep_checkpoints must be a positive integer, got 0",
    ),
    (lambda: RunSettings(checkpoint_every=-1), "--checkpoint_every must be >= 0, got -1"),
    (lambda: RunSettings(nan_policy="ignore"), "unknown --nan_policy='ignore'"),
    (lambda: DimensionSweep(seeds=0).fit([[0.0]]), "--seeds must be a positive integer, got 0"),
  ],
)
def test_each_setting_is_checked_where_it_is_declared(make, message):
  with pytest.raises(UserError) as e:
    make()
  assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_unknown_settings_name_the_valid_ones():
  with pytest.raises(ValueError, match="unknown setting\\(s\\) 'nope' for RunSettings"):
    declare.build(RunSettings, {"nope": 1})
  with pytest.raises(ValueError, match="unknown parameter 'nope' for DimensionSweep"):
    DimensionSweep(nope=1)


def test_a_decoder_list_is_a_string_of_known_decoders_for_the_autoencoder_only():
  assert Settings(decoder=["linear", "mlp"]).decoder == "linear,mlp"
  assert Settings(decoder="linear,mlp").decoders == ("linear", "mlp")
  assert Settings(model="lfads").decoders == ()
  with pytest.raises(UserError, match=r"^unknown --decoder='relu': choose one of linear, mlp"):
    Settings(decoder="linear,relu")
  with pytest.raises(UserError, match="^--decoder=linear,mlp lists several decoders: only"):
    Settings(model="lfads", decoder="linear,mlp")
