"""What happens after a step besides the step itself: hooks that `sweep.run_sweep` calls with its
`Loop`.

A hook is any callable `hook(loop) -> None`. It reads `loop.step`,
`loop.final`, `loop.evaluation()` (every `log_every` steps and at the end;
None otherwise) and `loop.state()`, and may end the run with `loop.stop(why)`.
run_sweep calls `Preemption` and `NanStop` (with --nan_policy=stop) first, the
caller's hooks next, then `Progress` (so a progress line means that step's
files are written) and `Checkpoints`.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from nmas_jax.training import sharding


def fmt_time(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Preemption:
  """SIGTERM or SIGINT (a preemptible VM's notice, Ctrl-C): the run stops after the current step,
  with a checkpoint at that step, and the signal is recorded (`loop.preempted`).

  One process: a handler records the signal (use as a context manager around
  the loop). Several processes: JAX's preemption sync point, so every host
  stops at the same step (the distributed runtime catches the signal there).
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self) -> Preemption:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      for s in self.SIGNALS:
        self._previous[s] = signal.signal(s, self._record)
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}

  def _record(self, signum, frame) -> None:
    del frame
    self.signum = signum

  def __call__(self, loop) -> None:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(loop.step):
        self.signum = int(signal.SIGTERM)
    if self.signum is not None:
      loop.preempt(self.signum)


class NanStop:
  """--nan_policy=stop: ends the run at the first model whose loss or gradient is non-finite."""

  def __init__(self, layer_names: Sequence[str] | None):
    self.layer_names = layer_names

  def __call__(self, loop) -> None:
    b = loop.built
    diverged = np.asarray(sharding.gather(b.stepper.diverged_at(loop.carry)))[: b.n_real]
    bad = np.flatnonzero(diverged >= 0)
    if len(bad):
      loop.stop(
        f"{b.table.describe(bad[0], self.layer_names, loop.cfg.decoders)} diverged "
        f"(non-finite loss or gradient) at step {int(diverged[bad[0]])}; "
        "--nan_policy=stop stopped the sweep"
      )


class Progress:
  """At each evaluation: one line with the rate, ETA and best model so far.

  Models are ranked by the held-out neurons' score that the dimension estimate
  uses (squared error; Poisson NLL for counts), else by the validation loss.
  """

  def __init__(
    self,
    log: Callable[[str], None],
    layer_names: Sequence[str] | None,
    clock: Callable[[], float] = time.perf_counter,
  ):
    self.log, self.layer_names, self.clock = log, layer_names, clock
    self._last: tuple[float, int] | None = None

  def __call__(self, loop) -> None:
    if self._last is None:
      self._last = (loop.start, loop.first_step)
    out = loop.evaluation()
    if out is None:
      return
    now = self.clock()
    rate = (loop.step - self._last[1]) / max(now - self._last[0], 1e-9)
    self._last = (now, loop.step)
    # The held-out score the sweep selects on: squared error, or Poisson NLL for counts.
    poisson = loop.built.prep.likelihood == "poisson"
    if "valid/cosmooth_mse" not in out.valid:  # no held-out neurons
      key, label = "valid/loss", "validation Poisson NLL" if poisson else "validation loss"
    elif poisson:
      key, label = "valid/cosmooth_loss", "held-out Poisson NLL"
    else:
      key, label = "valid/cosmooth_mse", "held-out cosmooth_mse"
    ok = np.isfinite(out.valid["valid/loss"])
    best = int(np.argmin(np.where(ok, out.valid[key], np.inf))) if ok.any() else 0
    steps, n = loop.cfg.steps, loop.built.n_real
    training = int(loop.selection.running[:n].sum())
    self.log(
      f"step {loop.step}/{steps}  {rate:.2f} steps/s  ETA {fmt_time((steps - loop.step) / rate)} "
      f"at most  {training}/{n} models training  "
      f"best {label} {out.valid[key][best]:.4g} "
      f"({loop.built.table.describe(best, self.layer_names, loop.cfg.decoders)})"
    )


class Metrics:
  """At each evaluation: {"train/loss", "valid/...": [models]} to `write(step, scalars)`
  (TensorBoard)."""

  def __init__(self, write: Callable[[int, dict[str, np.ndarray]], Any]):
    self.write = write

  def __call__(self, loop) -> None:
    out = loop.evaluation()
    if out is not None:
      self.write(loop.step, {"train/loss": out.train_loss, **out.valid})
    if loop.pbt is not None and loop.pbt.played == loop.step:  # a tournament at this step
      self.write(loop.step, loop.pbt.scalars())


class PartialResults:
  """At each evaluation before the last: `write(output)` (results.json with complete=false)."""

  def __init__(self, write: Callable[[Any], Any]):
    self.write = write

  def __call__(self, loop) -> None:
    out = loop.evaluation()
    if out is not None and not out.complete:
      self.write(out)


class Checkpoints:
  """Saves the real models' state every `every` steps (0: never) and at the end of the run."""

  def __init__(self, checkpointer, every: int):
    self.checkpointer, self.every = checkpointer, every

  def __call__(self, loop) -> None:
    if loop.final or (self.every and loop.step % self.every == 0):
      loop.evaluation()  # a due evaluation first: the checkpoint holds its selection
      self.checkpointer.save(loop.step, *loop.checkpoint())
