"""Early stopping inside the batch: each model's best evaluation so far, and if it converged."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Selection:
  """Each model's best regular evaluation so far: early stopping inside the batch.

  Arrays are [padded models] of the held-out loss the models are selected on
  (`Loop.select_key`): `score` the best so far (inf before any), `step` its
  step, `first` the first evaluation's; `trace` [evaluations, padded models] is
  `score` after each regular evaluation, at `trace_steps`, so that `converged`
  can be judged for any length of training (a run extended by a larger
  `--steps` judges as one that was that long from the start).
  """

  score: np.ndarray
  step: np.ndarray
  first: np.ndarray
  trace_steps: np.ndarray
  trace: np.ndarray

  @classmethod
  def fresh(cls, m: int) -> Selection:
    return cls(
      np.full(m, np.inf),
      np.zeros(m, np.int64),
      np.full(m, np.nan),
      np.zeros(0, np.int64),
      np.zeros((0, m)),
    )

  def update(self, step: int, loss_M: np.ndarray) -> np.ndarray:
    """Records an evaluation; returns [models] bool, True where it is the best so far."""
    loss_M = np.where(np.isfinite(loss_M), loss_M, np.inf)
    improved = loss_M < self.score
    self.score, self.step = (
      np.where(improved, loss_M, self.score),
      np.where(improved, step, self.step),
    )
    self.first = np.where(np.isnan(self.first), loss_M, self.first)
    self.trace_steps = np.append(self.trace_steps, step)
    self.trace = np.concatenate([self.trace, self.score[None]])
    return improved

  def converged(self, steps: int) -> np.ndarray:
    """[models] bool: the evaluations after the first four fifths of `steps` improved the best
    loss by under 1% of the improvement since the first evaluation."""
    early_E = self.trace_steps <= 0.8 * steps
    early = self.trace[early_E][-1] if early_E.any() else np.full_like(self.score, np.inf)
    with np.errstate(invalid="ignore"):
      total = np.maximum(self.first - self.score, 0.0)
      late = np.where(np.isfinite(early), early - self.score, np.inf)
      return late <= 0.01 * total

  def real(self, n: int) -> Selection:
    """The first `n` (real) models."""
    return Selection(
      self.score[:n], self.step[:n], self.first[:n], self.trace_steps, self.trace[:, :n]
    )

  def to_json(self) -> dict[str, list]:
    num = lambda a: [float(v) if np.isfinite(v) else None for v in a]
    return {
      "score": num(self.score),
      "step": self.step.tolist(),
      "first": num(self.first),
      "trace_steps": self.trace_steps.tolist(),
      "trace": [num(row) for row in self.trace],
    }

  @classmethod
  def from_json(cls, d: dict[str, list], m: int) -> Selection:
    arr = lambda v, fill: np.concatenate(
      [np.array([fill if x is None else x for x in v], float), np.full(m - len(v), fill)]
    )
    trace = np.array([arr(row, np.inf) for row in d["trace"]]).reshape(-1, m)
    return cls(
      arr(d["score"], np.inf),
      arr(d["step"], 0).astype(np.int64),
      arr(d["first"], np.nan),
      np.array(d["trace_steps"], np.int64),
      trace,
    )


def _padded(a: np.ndarray, m: int, fill: float = np.inf) -> np.ndarray:
  return np.concatenate([a, np.full(m - len(a), fill)])
