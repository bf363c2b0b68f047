"""One small metric writer: TensorBoard event files per model plus a JSON-lines log."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np


class MetricWriter:
  """Writes per-model scalars to `<workdir>/tb/<model>/` and `<workdir>/metrics.jsonl`.

  Each model gets its own TensorBoard run directory so TensorBoard draws one
  line per model under the same tag (train/loss, valid/mse, ...).
  """

  def __init__(self, workdir: str, model_names: Sequence[str]):
    from tensorboardX import SummaryWriter  # imported here: slow to import, only needed to log.

    self._names = list(model_names)
    self._tb = [SummaryWriter(os.path.join(workdir, "tb", n), flush_secs=30) for n in self._names]
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

  def write_scalars(self, step: int, scalars: Mapping[str, np.ndarray]) -> None:
    """scalars: {tag: [models] values}."""
    for i, name in enumerate(self._names):
      row = {"step": int(step), "model": name}
      for tag, values in scalars.items():
        v = float(np.asarray(values)[i])
        if np.isfinite(v):
          self._tb[i].add_scalar(tag, v, step)
        row[tag] = v if np.isfinite(v) else None
      self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()

  def close(self) -> None:
    for w in self._tb:
      w.close()
    self._jsonl.close()
