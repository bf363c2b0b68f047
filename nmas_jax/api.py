"""`DimensionSweep`: the scikit-learn-style estimator; the command line is a thin wrapper over it.

  from nmas_jax import DimensionSweep
  est = DimensionSweep(latents=(2, 4, 8, 16)).fit(X)   # X: [time, neurons] or [layers, time, neurons]
  est.optimal_latent_                                  # {layer: chosen dimension}
  z = est.transform(X)                                 # [time, latent] of the chosen model
  est.plot().savefig("sweep.png")
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from nmas_jax import checkpoint, data, decoding, evaluate, report, sharding, sweep, train, writers
from nmas_jax.data import UserError


class SweepStopped(RuntimeError):
  """Training stopped early (--nan_policy=stop); results.json says which model and when."""


_D = sweep.SweepConfig()


class DimensionSweep:
  """How many latent dimensions does each layer need? One batched sweep of LSTM autoencoders.

  Parameters mirror the command line's flags (same names, same defaults).
  Fitted attributes (trailing underscore): `results_` (the content of
  results.json), `optimal_latent_` {layer: int}, `dataset_`, `state_` (all
  models' trained state), `table_` (what each model is), `config_`.
  """

  def __init__(self, latents=_D.latents, *, hidden: int = _D.hidden, steps: int = _D.steps,
               seeds: int = _D.seeds, batch_size: int = _D.batch_size, window: int = _D.window,
               learning_rate: float = _D.learning_rate, weight_decay: float = _D.weight_decay,
               clip_norm: float = _D.clip_norm, decoder: str = _D.decoder,
               bidirectional: bool = _D.bidirectional, likelihood: str = _D.likelihood,
               heldout_neurons: float = _D.heldout_neurons, train_fraction: float = _D.train_fraction,
               gain_fraction: float = evaluate.DEFAULT_GAIN_FRACTION, shuffle_control: bool = False,
               shared_model: bool = False, log_every: int = _D.log_every, dtype: str = _D.dtype,
               verbose: bool = True):
    self.latents = latents
    self.hidden = hidden
    self.steps = steps
    self.seeds = seeds
    self.batch_size = batch_size
    self.window = window
    self.learning_rate = learning_rate
    self.weight_decay = weight_decay
    self.clip_norm = clip_norm
    self.decoder = decoder
    self.bidirectional = bidirectional
    self.likelihood = likelihood
    self.heldout_neurons = heldout_neurons
    self.train_fraction = train_fraction
    self.gain_fraction = gain_fraction
    self.shuffle_control = shuffle_control
    self.shared_model = shared_model
    self.log_every = log_every
    self.dtype = dtype
    self.verbose = verbose

  # -- scikit-learn conventions, without depending on scikit-learn.

  @classmethod
  def _param_names(cls) -> list[str]:
    sig = inspect.signature(cls.__init__)
    return [p for p in sig.parameters if p != "self"]

  def get_params(self, deep: bool = True) -> dict[str, Any]:
    del deep
    return {p: getattr(self, p) for p in self._param_names()}

  def set_params(self, **params) -> "DimensionSweep":
    for k, v in params.items():
      if k not in self._param_names():
        raise ValueError(f"unknown parameter {k!r} for DimensionSweep; valid: {self._param_names()}")
      setattr(self, k, v)
    return self

  def __repr__(self) -> str:
    changed = {k: v for k, v in self.get_params().items()
               if v != inspect.signature(type(self).__init__).parameters[k].default}
    return f"DimensionSweep({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

  def config(self) -> sweep.SweepConfig:
    """The SweepConfig these parameters define (validated against data in fit)."""
    return sweep.SweepConfig(
        latents=sweep.parse_latents(self.latents), seeds=self.seeds, steps=self.steps,
        batch_size=self.batch_size, window=self.window, hidden=self.hidden,
        learning_rate=self.learning_rate, weight_decay=self.weight_decay, clip_norm=self.clip_norm,
        decoder=self.decoder, bidirectional=self.bidirectional, likelihood=self.likelihood,
        heldout_neurons=self.heldout_neurons, train_fraction=self.train_fraction,
        log_every=self.log_every, dtype=self.dtype)

  # -- fitting.

  def fit(self, X, *, workdir: str | None = None, identity: dict[str, Any] | None = None,
          overwrite: bool = False, checkpoint_every: int = 100, keep_checkpoints: int = 3,
          nan_policy: str = "freeze", flags_text: str = "", data_seed: int = 0,
          mesh: str | Any = "auto", batching: str = "auto") -> "DimensionSweep":
    """Trains the whole sweep on X as one batched computation and evaluates it.

    Args:
      X: numpy [time, neurons] or [layers, time, neurons], or a `data.Dataset`.
      workdir: if given, results.json/.csv, sweep.png, report.md, TensorBoard
        logs and checkpoints go there, and a killed fit resumes from it.
      identity: what defines this sweep in the workdir (default: the
        parameters and the data's shape); a workdir holding another sweep is
        refused unless `overwrite`.
      checkpoint_every, keep_checkpoints: checkpointing in the workdir.
      nan_policy: "freeze" or "stop" for models whose loss turns non-finite.
      flags_text: the command line's flags, recorded in flags.txt/report.md.
      data_seed: seed of the shuffle control's offsets.
      mesh: "auto" (every device on the models axis), a spec like
        "models:4,data:2", or a `jax.sharding.Mesh` with those axes. With
        several processes only process 0 writes files.
      batching: how the step runs the models: "vmap" (all in one vmap at the
        widest latent), "by_latent" (one vmap per latent size at its own
        width; one device only) or "auto" (by_latent on one CPU device, where
        it measured faster, else vmap). Results agree to float rounding.
    Returns:
      self, fitted.
    """
    say = print if self.verbose and jax.process_index() == 0 else (lambda *a, **k: None)
    log: Callable[[str], None] = lambda s: say(s, flush=True)
    dataset = data.as_dataset(X)
    if self.shuffle_control:
      dataset = data.with_shuffle_control(dataset, data_seed)
    cfg = self.config()
    sweep.check_config(cfg, dataset)
    mesh = sharding.make_mesh(mesh) if isinstance(mesh, str) else mesh
    sweep.resolve_batching(batching, mesh)
    writes = workdir is not None and jax.process_index() == 0  # one writer: process 0
    ckpt = writer = partial = None
    if writes:
      _prepare_workdir(workdir)
      if identity is None:
        identity = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()
                       if k not in ("verbose", "log_every", "steps", "gain_fraction")},
                    "data_shape": list(dataset.x_LTN.shape), "dataset": dataset.name}
      resuming = checkpoint.claim_workdir(workdir, identity, overwrite)
      if flags_text:
        report.atomic_write(os.path.join(workdir, "flags.txt"), lambda f: f.write(flags_text))
      table = sweep.ModelTable.build(dataset.num_layers, cfg.latents, cfg.seeds)
      writer = writers.MetricWriter(workdir, [
          f"layer={dataset.layer_names[l]},latent={k},seed={s}"
          for l, k, s in zip(table.layer, table.latent, table.seed)])
      partial = lambda o: report.write_json(os.path.join(workdir, "results.json"),
                                            sweep.results_dict(dataset, cfg, o))
    if workdir is not None:  # every process takes part in (collective) checkpointing
      ckpt = checkpoint.Checkpointer(workdir, keep_checkpoints)
      if writes and resuming and ckpt.latest_step() is None:
        log("no checkpoint in the workdir yet: starting from step 0")
    try:
      out = sweep.run_sweep(dataset, cfg, log=log,
                            on_metrics=None if writer is None else writer.write_scalars,
                            on_eval=partial, checkpointer=ckpt, checkpoint_every=checkpoint_every,
                            nan_policy=nan_policy, mesh=mesh, batching=batching)
    finally:
      if writer is not None:
        writer.close()
      if ckpt is not None:
        ckpt.close()
    results = sweep.results_dict(dataset, cfg, out)
    if out.stopped:
      if writes:
        report.write_json(os.path.join(workdir, "results.json"), results)
      raise SweepStopped(out.stopped)
    ev = evaluate.evaluate_sweep(dataset, cfg, out, gain_fraction=self.gain_fraction, log=log)
    results = evaluate.merge_into_results(results, ev)
    if self.shuffle_control:
      results["shuffle_control"] = _shuffle_summary(results)
    if self.shared_model:
      real = dataset if not self.shuffle_control else dataclasses.replace(
          dataset, x_LTN=dataset.x_LTN[: dataset.num_layers // 2],
          layer_names=dataset.layer_names[: dataset.num_layers // 2])
      if real.num_layers < 2:
        log("shared model skipped: layer decoding needs at least 2 layers")
      else:
        shared = sweep.run_sweep(real, cfg, log=log, shared=True, mesh=mesh, batching=batching)
        results["layer_accuracy"] = decoding.layer_accuracy(real, cfg, shared)
    self.results_, self.dataset_, self.config_ = results, dataset, cfg
    self.state_, self.table_ = out.state, out.table
    self.optimal_latent_ = dict(results["optimal_latent"])
    self.paths_ = report.write_all(workdir, results, flags_text) if writes else []
    return self

  def _check_fitted(self) -> None:
    if not hasattr(self, "results_"):
      raise RuntimeError("this DimensionSweep is not fitted yet: call fit(X) first")

  def model_index(self, latent: int | None = None, layer: str | int | None = None, seed: int = 0) -> int:
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
    hits = np.flatnonzero((self.table_.layer == li) & (self.table_.latent == k) & (self.table_.seed == seed))
    if not len(hits):
      raise ValueError(f"no model with latent {k} for layer {layer}: latents swept are "
                       f"{', '.join(map(str, self.config_.latents))}")
    return int(hits[0])

  def transform(self, X, latent: int | None = None, layer: str | int | None = None) -> np.ndarray:
    """Latent trajectory [time, latent] of one layer's model (default: its chosen latent size).

    X is [time, neurons] (or [layers, time, neurons]: the given layer is
    used). Time is cut into the training windows, each run from a zero state,
    as in training; a trailing partial window is run as a shorter one.
    """
    i = self.model_index(latent, layer)
    x = np.asarray(X, np.float32)
    if x.ndim == 3:
      x = x[self.table_.layer[i]]
    if x.ndim != 2 or x.shape[1] != self.dataset_.num_neurons:
      raise ValueError(f"X must be [time, {self.dataset_.num_neurons}] (the fitted neuron count), "
                       f"got shape {np.shape(X)}")
    params = jax.tree.map(lambda a: a[i], self.state_.params)
    k = int(self.table_.latent[i])
    model = sweep.make_model(self.config_, self.dataset_.num_neurons)
    mask = jnp.asarray(sweep.input_masks(self.config_, self.dataset_)[self.table_.layer[i]])
    w = self.config_.window
    n = (len(x) // w) * w
    zs = []
    if n:
      _, z = train.predict(params, k, jnp.asarray(x[:n].reshape(-1, w, x.shape[1])), mask, model=model)
      zs.append(np.asarray(z).reshape(n, -1))
    if n < len(x):
      _, z = train.predict(params, k, jnp.asarray(x[None, n:]), mask, model=model)
      zs.append(np.asarray(z)[0])
    return np.concatenate(zs)[:, :k]

  def score(self, X=None) -> float:
    """The dimension metric at each layer's chosen latent, averaged over layers; higher is better.

    With X=None, the fitted data's held-out score (seeds averaged). Given X,
    a new recording of the same layers, the chosen models (seed 0) are scored
    on X's held-out block the same way.
    """
    self._check_fitted()
    dim = self.results_["dimension"]
    metric, layers = dim["metric"], self.dataset_.layer_names
    if X is None:
      vals = [dim["layers"][l]["mean"][sorted(self.config_.latents).index(self.optimal_latent_[l])]
              for l in layers]
      return float(np.mean(vals))
    ds = data.as_dataset(X)
    if ds.layer_names != layers or ds.num_neurons != self.dataset_.num_neurons:
      raise ValueError(f"X must have {len(layers)} layers of {self.dataset_.num_neurons} neurons, "
                       f"got {ds.num_layers} of {ds.num_neurons}")
    ds = dataclasses.replace(ds, name=self.dataset_.name)
    t_train = data.train_time(ds.num_time, self.config_.train_fraction)
    data.check_window(ds.num_time, t_train, self.config_.window)
    lik = self.results_["likelihood"]
    held = data.heldout_mask(ds.num_layers, ds.num_neurons, self.config_.heldout_neurons)
    valid = evaluate.flat_valid(ds, t_train, self.config_.window)
    preds = evaluate.model_predictions(self.state_, self.table_, ds, self.config_)
    sign = 1.0 if evaluate.higher_is_better(metric) else -1.0
    vals = []
    for li, name in enumerate(layers):
      chosen = np.flatnonzero((self.table_.layer == li) & (self.table_.latent == self.optimal_latent_[name]))
      vals += [sign * evaluate.block_metrics(preds[i], valid[li], held[li], lik)[metric] for i in chosen]
    return float(np.mean(vals))

  def plot(self):
    """The matplotlib figure of sweep.png."""
    self._check_fitted()
    return report.plot_sweep(self.results_)

  # -- persistence (orbax).

  def save(self, path: str) -> None:
    """Saves parameters, trained state and results to a directory (orbax + JSON)."""
    self._check_fitted()
    os.makedirs(path, exist_ok=True)
    ckpt = checkpoint.Checkpointer(path, keep=1)
    ckpt.save(0, self.state_, {"params": _jsonable(self.get_params()),
                               "results": self.results_,
                               "dataset": {"layer_names": list(self.dataset_.layer_names),
                                           "name": self.dataset_.name,
                                           "num_neurons": self.dataset_.num_neurons,
                                           "num_time": self.dataset_.num_time}})
    ckpt.close()

  @classmethod
  def load(cls, path: str) -> "DimensionSweep":
    """Loads a saved DimensionSweep; `transform` gives identical output."""
    ckpt = checkpoint.Checkpointer(path, keep=1)
    step = ckpt.latest_step()
    if step is None:
      raise UserError(f"no saved DimensionSweep in {path}")
    aux = ckpt.restore_aux(step)
    est = cls(**{k: (tuple(v) if k == "latents" else v) for k, v in aux["params"].items()})
    cfg = est.config()
    ds_meta = aux["dataset"]
    n_layers = len(ds_meta["layer_names"])
    like = sweep.init_sweep(cfg, sweep.ModelTable.build(n_layers, cfg.latents, cfg.seeds),
                            ds_meta["num_neurons"])
    state, _ = ckpt.restore(step, like)
    ckpt.close()
    est.state_ = state
    est.table_ = sweep.ModelTable.build(n_layers, cfg.latents, cfg.seeds)
    est.config_, est.results_ = cfg, aux["results"]
    est.optimal_latent_ = dict(est.results_["optimal_latent"])
    est.dataset_ = data.Dataset(np.zeros((n_layers, 0, ds_meta["num_neurons"]), np.float32),
                                tuple(ds_meta["layer_names"]), ds_meta["name"])
    return est


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
  return json.loads(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}))


def _prepare_workdir(path: str) -> None:
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test.{os.getpid()}")
    with open(probe, "w", encoding="utf-8"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write to --workdir={path}: {e.strerror or e}") from None


def _shuffle_summary(results: dict[str, Any]) -> dict[str, Any]:
  """Held-out gain over the smallest latent, real layers vs their shuffled controls."""
  dim = results["dimension"]["layers"]
  out = {"metric": results["dimension"]["metric"], "layers": {}}
  for name in results["layers"]:
    if name.endswith(data.SHUFFLED_SUFFIX):
      continue
    ctrl = name + data.SHUFFLED_SUFFIX
    gain = lambda l: float(np.nanmax(dim[l]["mean"]) - dim[l]["mean"][0])
    out["layers"][name] = {"control": ctrl, "gain": gain(name), "control_gain": gain(ctrl)}
  return out
