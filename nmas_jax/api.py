"""`DimensionSweep`: the scikit-learn-style estimator; the command line is a thin wrapper over it.

from nmas_jax import DimensionSweep
est = DimensionSweep(latents=(2, 4, 8, 16)).fit(X)   # X: [time, neurons] or [layers, time, neurons]
est.optimal_latent_                                  # {layer: chosen dimension}
z = est.transform(X)                                 # [time, latent] of the chosen model
est.plot().savefig("sweep.png")
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import data, declare, files, models
from nmas_jax import workdir as workdir_lib
from nmas_jax.config import RunSettings, Settings
from nmas_jax.data import preprocess, splits
from nmas_jax.errors import Preempted, SweepStopped, UserError
from nmas_jax.evaluation import decoding, evaluate
from nmas_jax.reporting import plots, report
from nmas_jax.reporting import results as results_lib
from nmas_jax.training import checkpoint, sharding, sweep, train
from nmas_jax.training.table import ModelTable, init_states

# Parameters as declared: None where the model family supplies the value (`Settings`).
_D = {f.name: f.default for f in dataclasses.fields(Settings)}


class DimensionSweep:
  """How many latent dimensions does each layer need? One batched sweep of LSTM autoencoders.

  Parameters: exactly the `config.Settings` (the command line's model,
  training and evaluation flags: same names, same defaults). Fitted
  attributes (trailing underscore): `results_` (the content of results.json),
  `optimal_latent_` {layer: int}, `dataset_`, `state_` (all models' trained
  state), `table_` (what each model is), `config_` (the `Settings`), `phase_seconds_` (wall
  seconds of each phase of the fit: prepare, compile, training, predictions, baselines,
  comparators, estimates, report).
  """

  def __init__(self, latents=_D["latents"], **params):
    self.set_params(
      latents=latents,
      **{k: _D[k] for k in declare.names(Settings) if k != "latents" and k not in params},
    )
    self.set_params(**params)

  # -- scikit-learn conventions, without depending on scikit-learn.

  def get_params(self, deep: bool = True) -> dict[str, Any]:
    del deep
    return {p: getattr(self, p) for p in declare.names(Settings)}

  def set_params(self, **params) -> DimensionSweep:
    valid = declare.names(Settings)
    for k, v in params.items():
      if k not in valid:
        raise ValueError(f"unknown parameter {k!r} for DimensionSweep; valid: {valid}")
      setattr(self, k, v)
    return self

  def __repr__(self) -> str:
    changed = {k: v for k, v in self.get_params().items() if v != _D[k]}
    return f"DimensionSweep({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

  def config(self) -> Settings:
    """The `Settings` these parameters define (UserError for a bad value)."""
    return Settings(**self.get_params())

  # -- fitting.

  def fit(
    self,
    X,
    workdir: str | None = None,
    *,
    mesh: str | Any = "auto",
    identity: dict[str, Any] | None = None,
    flags_text: str = "",
    data_seed: int = 0,
    **run,
  ) -> DimensionSweep:
    """Trains the whole sweep on X as one batched computation and evaluates it.

    Args:
      X: numpy [time, neurons] or [layers, time, neurons], or a `data.Dataset`.
      workdir: if given, results.json/.csv, sweep.png, report.md, TensorBoard
        logs and checkpoints go there, and a killed fit resumes from it. With
        several processes only process 0 writes files.
      mesh: "auto" (every device on the models axis), a spec like
        "models:4,data:2", or a `jax.sharding.Mesh` with those axes.
      identity: what defines this sweep in the workdir (default: the
        settings' identity and the data's shape); a workdir holding another
        sweep is refused unless `overwrite=True`.
      flags_text: the command line's flags, recorded in flags.txt/report.md.
      data_seed: seed of the shuffle control's offsets and of the --neuron_counts subsets.
      **run: `config.RunSettings` (checkpoint_every, keep_checkpoints,
        overwrite, nan_policy, batching).
    Returns:
      self, fitted.
    """
    say = print if self.verbose and jax.process_index() == 0 else (lambda *a, **k: None)
    log: Callable[[str], None] = lambda s: say(s, flush=True)
    run_cfg = declare.build(RunSettings, {**run, "mesh": mesh if isinstance(mesh, str) else "auto"})
    cfg = self.config()
    dataset = data.as_dataset(X)
    if cfg.shuffle_control:
      dataset = data.with_shuffle_control(dataset, data_seed)
    clock = evaluate.Clock()
    prep = splits.prepare(dataset, cfg, data_seed=data_seed)  # every check, before any write
    clock.lap("prepare")
    mesh = sharding.make_mesh(mesh) if isinstance(mesh, str) else mesh
    if identity is None:
      identity = {
        **declare.identity(cfg),
        "data_shape": list(dataset.x_LTN.shape),
        "dataset": dataset.name,
      }
    out = workdir_lib.run(prep, cfg, run_cfg, workdir, identity, flags_text, mesh, log)
    clock.lap("training")
    clock.seconds["compile"] = out.compile_seconds
    clock.seconds["training"] -= out.compile_seconds
    results = results_lib.results_dict(prep, cfg, out)
    writes = workdir is not None and jax.process_index() == 0
    if out.stopped:
      if writes:
        files.write_json(os.path.join(workdir, "results.json"), results)
      if out.preempted is not None:
        raise Preempted(out.step, out.preempted)
      raise SweepStopped(out.stopped)
    results = self._evaluate(prep, cfg, out, results, mesh, run_cfg.batching, log, clock)
    self.results_, self.dataset_, self.config_ = results, dataset, cfg
    self.state_, self.table_, self.preprocessing_ = out.state, out.table, prep.preprocessing
    self.optimal_latent_ = dict(results["optimal_latent"])
    self.paths_ = report.write_all(workdir, results, flags_text) if writes else []
    clock.lap("report")
    self.phase_seconds_ = dict(clock.seconds)
    return self

  def _evaluate(self, prep, cfg, out, results, mesh, batching, log, clock) -> dict[str, Any]:
    """results.json's evaluation fields: held-out metrics, baselines, estimates, controls."""
    results = results_lib.merge_into_results(
      results, evaluate.evaluate_sweep(prep, cfg, out, log=log, clock=clock)
    )
    clock.lap("estimates")
    dataset = prep.dataset
    for name in ("optimal_latent", "optimal_latent_interval"):  # where evaluation set none
      if cfg.decoders and f"{name}_by_decoder" not in results:
        results[f"{name}_by_decoder"] = {cfg.decoders[0]: dict(results[name])}
    if cfg.shuffle_control:
      results["shuffle_control"] = _shuffle_summary(results)
    if cfg.shared_model:
      real = (
        dataset
        if not cfg.shuffle_control
        else dataclasses.replace(
          dataset,
          x_LTN=dataset.x_LTN[: dataset.num_layers // 2],
          layer_names=dataset.layer_names[: dataset.num_layers // 2],
        )
      )
      if real.num_layers < 2:
        log("shared model skipped: layer decoding needs at least 2 layers")
      else:
        shared = splits.prepare(real, cfg, shared=True)
        out = sweep.run_sweep(shared, cfg, log=log, mesh=mesh, batching=batching)
        results["layer_accuracy"] = decoding.layer_accuracy(shared, cfg, out)
      clock.lap("layer_decoding")
    return results

  def _check_fitted(self) -> None:
    if not hasattr(self, "results_"):
      raise RuntimeError("this DimensionSweep is not fitted yet: call fit(X) first")

  def model_index(
    self, latent: int | None = None, layer: str | int | None = None, seed: int = 0
  ) -> int:
    """Index on the models axis (of `state_`) of a layer's model; latent None = the chosen one."""
    self._check_fitted()
    names = self.dataset_.layer_names
    if layer is None:
      layer = names[0]
    if isinstance(layer, (int, np.integer)):
      layer = names[int(layer)]
    if layer not in names:
      raise ValueError(f"unknown layer {layer!r}: this sweep has layers {', '.join(names)}")
    li = names.index(layer)
    k = self.optimal_latent_[layer] if latent is None else int(latent)
    if k is None:
      raise ValueError(
        f"no dimension was chosen for layer {layer} (no neurons were held out): "
        "pass latent=k for one of the swept models"
      )
    if k == 0:
      raise ValueError(
        f"layer {layer}'s chosen dimension is 0 (no latent size beat the zero-latent "
        "null on held-out neurons), so there is no chosen model: pass latent=k"
      )
    hits = np.flatnonzero(
      (self.table_.layer == li)
      & (self.table_.latent == k)
      & (self.table_.seed == seed)
      & (self.table_.count == 0)
    )
    bands = (self.results_.get("optimal_latent_bands") or {}).get(layer)
    if latent is None and bands:  # multiscale: the chosen counts per band
      hits = hits[(self.table_.bands[hits] == bands).all(axis=1)]
    if not len(hits):
      raise ValueError(
        f"no model with latent {k} for layer {layer}: latents swept are "
        f"{', '.join(map(str, self.config_.latents))}"
      )
    return int(hits[0])

  def input_mask(self, layer: str | int = 0, seed: int = 0) -> np.ndarray:
    """float32 [neurons]: what the encoder of a (layer, seed)'s models sees of each neuron (0:
    held out)."""
    self._check_fitted()
    li = layer if isinstance(layer, (int, np.integer)) else self.dataset_.layer_names.index(layer)
    return (~self.preprocessing_.heldout_SLN[seed, li]).astype(np.float32)

  def _as_fitted(self, X) -> data.Dataset:
    """New raw data of the fitted layers and neurons as a Dataset named like the fitted one."""
    ds = data.as_dataset(X)
    layers, n = self.dataset_.layer_names, self.dataset_.num_neurons
    if ds.num_layers != len(layers) or ds.num_neurons != n:
      raise ValueError(
        f"X must have {len(layers)} layers of {n} neurons (as fitted), "
        f"got {ds.num_layers} of {ds.num_neurons}"
      )
    return dataclasses.replace(ds, name=self.dataset_.name, layer_names=layers)

  def preprocess(self, X, layer: str | int = 0) -> np.ndarray:
    """One layer of raw activity as the models see it: the fitted neurons, normalised with the
    fitted statistics. X is [time, neurons] of that layer or [layers, time, neurons], raw as
    given to `fit`; returns float32 [time, model neurons]."""
    self._check_fitted()
    li = layer if isinstance(layer, (int, np.integer)) else self.dataset_.layer_names.index(layer)
    x = np.asarray(X, np.float64)
    if x.ndim == 2:  # one layer: the others are placeholders
      x = np.broadcast_to(x, (self.dataset_.num_layers,) + x.shape)
    return self.preprocessing_.apply(self._as_fitted(x)).x_LTN[int(li)]

  def transform(self, X, latent: int | None = None, layer: str | int | None = None) -> np.ndarray:
    """Latent trajectory [time, latent] of one layer's model (default: its chosen latent size,
    seed 0).

    X is raw activity as given to `fit`: [time, neurons] of that layer, or
    [layers, time, neurons]; it is preprocessed exactly as the fitted data was
    (same neurons, the fitted normalisation statistics). Time is cut into the
    training windows, each run from a zero state, as in training; a trailing
    partial window is run as a shorter one.
    """
    i = self.model_index(latent, layer)
    li = int(self.table_.layer[i])
    x = self.preprocess(X, li)
    params = sharding.take(self.state_.params, i)
    k = self.table_.model_latent[i]
    model = models.make_model(self.config_, x.shape[1])
    mask = jnp.asarray(self.input_mask(li, int(self.table_.seed[i])))
    w = self.config_.window
    n = (len(x) // w) * w
    zs = []
    if n:
      _, z = train.predict(
        params, k, jnp.asarray(x[:n].reshape(-1, w, x.shape[1])), mask, model=model
      )
      zs.append(np.asarray(z).reshape(n, -1))
    if n < len(x):
      _, z = train.predict(params, k, jnp.asarray(x[None, n:]), mask, model=model)
      zs.append(np.asarray(z)[0])
    z = np.concatenate(zs)
    # The used units (multiscale: each band's, bands in --timescales order).
    return z[:, np.asarray(model.used_units(k)) > 0]

  def score(self, X=None) -> float:
    """Held-out gain over the zero-latent null at each layer's chosen latent (0 where that is 0),
    per held-out element, averaged over layers and seeds; higher is better.

    With X=None, the fitted data's (validation block). Given X, a new
    recording of the same layers and neurons, the chosen models are scored on
    X's validation block the same way, X prepared as the fitted data was.
    """
    self._check_fitted()
    layers = self.dataset_.layer_names
    if any(self.optimal_latent_[l] is None for l in layers):
      raise ValueError("no dimension was chosen (no neurons were held out), so there is no score")
    dim = self.results_["dimension"]["layers"]
    if X is None:
      return float(
        np.mean(
          [
            dim[l]["gain"][dim[l]["latents"].index(self.optimal_latent_[l])]
            if self.optimal_latent_[l]
            else 0.0
            for l in layers
          ]
        )
      )
    prep = splits.prepare(self._as_fitted(X), self.config_, reuse=self.preprocessing_)
    return evaluate.chosen_gain(
      prep, self.config_, self.state_, self.table_, [self.optimal_latent_[l] for l in layers]
    )

  def plot(self):
    """The matplotlib figure of sweep.png."""
    self._check_fitted()
    return plots.plot_sweep(self.results_)

  # -- persistence (orbax).

  def save(self, path: str) -> None:
    """Saves parameters, trained state and results to a directory (orbax + JSON)."""
    self._check_fitted()
    os.makedirs(path, exist_ok=True)
    ckpt = checkpoint.Checkpointer(path, keep=1)
    ckpt.save(
      0,
      self.state_,
      {
        "params": _jsonable(self.get_params()),
        "results": self.results_,
        "preprocessing": self.preprocessing_.to_json(),
        "dataset": {
          "layer_names": list(self.dataset_.layer_names),
          "name": self.dataset_.name,
          "num_neurons": self.dataset_.num_neurons,
          "num_time": self.dataset_.num_time,
        },
      },
    )
    ckpt.close()

  @classmethod
  def load(cls, path: str) -> DimensionSweep:
    """Loads a saved DimensionSweep; `transform` gives identical output."""
    ckpt = checkpoint.Checkpointer(path, keep=1)
    step = ckpt.latest_step()
    if step is None:
      raise UserError(f"no saved DimensionSweep in {path}")
    aux = ckpt.restore_aux(step)
    est = cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in aux["params"].items()})
    cfg = est.config()
    ds_meta = aux["dataset"]
    n_layers = len(ds_meta["layer_names"])
    est.preprocessing_ = preprocess.Preprocessing.from_json(aux["preprocessing"])
    est.table_ = ModelTable.build(
      n_layers,
      cfg.latents,
      cfg.heldout_sets,
      cfg.neuron_counts,
      models.family(cfg.model).sweep_bands(cfg),
      len(cfg.decoders),
    )
    model_neurons = est.preprocessing_.neuron_index_LN.shape[1]
    like = init_states(cfg, est.table_, model_neurons, train.optimizer_for(cfg))
    est.state_, _ = ckpt.restore(step, like)
    ckpt.close()
    est.config_, est.results_ = cfg, aux["results"]
    est.optimal_latent_ = dict(est.results_["optimal_latent"])
    est.dataset_ = data.Dataset(
      np.zeros((n_layers, 0, ds_meta["num_neurons"]), np.float32),
      tuple(ds_meta["layer_names"]),
      ds_meta["name"],
    )
    return est


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
  return json.loads(
    json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()})
  )


def _shuffle_summary(results: dict[str, Any]) -> dict[str, Any]:
  """Best held-out gain over the zero-latent null and the chosen dimension, real layers vs
  their shuffled controls."""
  dim = results["dimension"]["layers"]
  out = {"gain": results["dimension"].get("gain"), "layers": {}}
  best = lambda l: max((g for g in dim[l].get("gain", []) if g is not None), default=None)
  for name in results["layers"]:
    if name.endswith(data.SHUFFLED_SUFFIX):
      continue
    ctrl = name + data.SHUFFLED_SUFFIX
    out["layers"][name] = {
      "control": ctrl,
      "gain": best(name),
      "control_gain": best(ctrl),
      "chosen": results["optimal_latent"][name],
      "control_chosen": results["optimal_latent"][ctrl],
    }
  return out
