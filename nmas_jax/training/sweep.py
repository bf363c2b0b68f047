"""A whole latent-size sweep as ONE batched computation: build once, then a short loop with hooks.

`build` goes through the data once (prepared and placed), then makes the
models and the stepper. `run_sweep` starts from a checkpoint, an
`init_state` or a fresh init, steps every model at once, and after each step
calls its hooks (`hooks`: NaN stop, progress, metrics, partial results,
checkpoints), which see the run through a `Loop`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax

from nmas_jax import models
from nmas_jax.config import Settings
from nmas_jax.data import splits
from nmas_jax.training import hooks as hooks_lib
from nmas_jax.training import sharding, stepper, train
from nmas_jax.training.loop import Loop, SweepOutput
from nmas_jax.training.loop import start as start_loop
from nmas_jax.training.table import ModelTable, init_states


@dataclasses.dataclass
class Built:
  """Everything the loop needs, made in one pass: prepared data on the mesh, models, stepper."""

  prep: splits.Prepared
  cfg: Settings
  table: ModelTable  # padded to the mesh; the first `n_real` models are real
  n_real: int
  mesh: Any
  placed: splits.Placed
  model: Any
  tx: optax.GradientTransformation  # the one optimizer, from the settings
  stepper: stepper.Stepper

  def init_states(self) -> train.TrainState:
    """Every model's initial state [padded models], sharded on the mesh's models axis."""
    return init_states(
      self.cfg,
      self.table,
      self.prep.num_neurons,
      self.tx,
      out_sharding=sharding.models_sharding(self.mesh),
      readout_bias_LN=self.prep.null_link_LN(),
    )

  def describe(self) -> str:
    cfg = self.cfg
    ds, prep = self.prep.dataset, self.prep
    what = "one shared model of all layers" if prep.shared else f"{ds.num_layers} layers"
    pad = len(self.table) - self.n_real
    n = prep.stride  # bins per trial, 1 for a continuous recording
    unit = f"trials of {n} bins" if ds.trial_length else "time bins"
    blocks = (
      f"{ds.num_time // n} {unit} ({prep.t_train // n} train / "
      f"{(prep.t_valid - prep.t_train) // n} validation / {(ds.num_time - prep.t_valid) // n} "
      "test)"
    )
    grid = (
      f"{len(np.unique(self.table.bands, axis=0))} band combinations"
      if self.table.bands.shape[1]
      else f"{len(cfg.latents)} latents"
    ) + (f" x {len(cfg.decoders)} decoders" if self.table.decoder.shape[1] else "")
    folds = f" x {cfg.neuron_folds} neuron folds" if cfg.neuron_folds else ""
    folds += f" x {cfg.population} members" if cfg.population > 1 else ""
    counts = (
      f" x {len(np.unique(self.table.count))} neuron counts" if np.any(self.table.count) else ""
    )
    return (
      f"sweep: {self.n_real} models{f' + {pad} inert padding' if pad else ''} ({what}{counts} x "
      f"{grid} x {cfg.seeds} seeds{folds}), {ds.num_neurons} neurons, {blocks}, "
      f"{cfg.steps} steps on {self.mesh.devices.size} {jax.devices()[0].platform} device(s), "
      f"mesh {dict(self.mesh.shape)}, batching {self.stepper.description}"
    )


def build(
  prep: splits.Prepared,
  cfg: Settings,
  *,
  mesh=None,
  batching: str = "auto",
  lanes: list | None = None,
) -> Built:
  """Places the prepared data, then makes the models and their stepper (see `run_sweep`)."""
  mesh = sharding.make_mesh("auto") if mesh is None else mesh
  real = ModelTable.for_sweep(prep, cfg)
  table = real.padded(sharding.padded_size(len(real), mesh))
  placed = prep.place(mesh, table.layer, table.seed, table.count)
  model = models.make_model(cfg, prep.num_neurons)
  tx = train.optimizer_for(cfg)
  step = stepper.make_stepper(batching, model, tx, prep, placed, table, mesh, lanes)
  return Built(prep, cfg, table, len(real), mesh, placed, model, tx, step)


def run_sweep(
  prep: splits.Prepared,
  cfg: Settings,
  *,
  hooks: Sequence[Callable[[Loop], None]] = (),
  checkpointer=None,
  checkpoint_every: int = 0,
  init_state: train.TrainState | None = None,
  nan_policy: str = "freeze",
  mesh=None,
  batching: str = "auto",
  lanes: list | None = None,
  log: Callable[[str], None] = print,
) -> SweepOutput:
  """Trains every (layer, latent, seed) model of `prep` in one batched computation.

  Args:
    prep, cfg: the data (`splits.prepare(dataset, cfg, shared)`) and the sweep's settings; with
      `prep.shared`, one model per (latent, seed) learns windows of every layer.
    hooks: called with the `Loop` after every step, after the NaN stop and
      before the progress line and the checkpoint (e.g. `hooks.Metrics`).
    checkpointer: a `checkpoint.Checkpointer`: resume from its latest step,
      save every `checkpoint_every` steps (0: only) at the end.
    init_state: the real models' initial state [models] instead of an init.
    nan_policy: "freeze" (a diverging model is frozen, the others go on) or "stop".
    mesh, batching, lanes: where and how the step runs (`build`).
  Returns:
    The last evaluation, with each real model's best state (lowest held-out
    validation loss over the regular evaluations) on the host and its metrics.
  """
  b = build(prep, cfg, mesh=mesh, batching=batching, lanes=lanes)
  start = start_loop(b, checkpointer, init_state, log)
  log(b.describe())
  loop = Loop(b, cfg, start)
  log(f"compiled in {loop.compile_seconds:.1f}s")
  names = None if prep.shared else prep.dataset.layer_names
  preemption = hooks_lib.Preemption()
  every = [preemption] + ([hooks_lib.NanStop(names)] if nan_policy == "stop" else [])
  every += [*hooks, hooks_lib.Progress(log, names)]
  every += [hooks_lib.Checkpoints(checkpointer, checkpoint_every)] if checkpointer else []
  with preemption:
    for step in range(start.step + 1, 0 if loop.done else cfg.steps + 1):
      loop.advance(step)
      for hook in every:
        hook(loop)
      if loop.stopped:
        log(f"stopped: {loop.stopped}")
        break
      if loop.done:
        log(f"every model converged by step {step}")
        break
  out = loop.best()
  if loop.step == start.step:  # resumed at (or past) the last step: nothing was trained
    out.seconds = 0.0
  return out
