"""Checkpoints of a whole sweep (orbax) and the workdir's identity.

A workdir belongs to one sweep: `sweep.json` records the settings that define
it (data, latents, layers, seeds, shapes, optimiser). Re-running the same
command resumes from the latest checkpoint; a different sweep is refused
unless the caller overwrites.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import orbax.checkpoint as ocp

from nmas_jax import report
from nmas_jax.data import UserError

SWEEP_FILE = "sweep.json"
# What a sweep leaves in its workdir; --overwrite removes exactly these.
OUTPUTS = ("checkpoints", "tb", "metrics.jsonl", "results.json", "results.csv", "sweep.png",
           "decoding.png", "report.md", "flags.txt", SWEEP_FILE)


class Checkpointer:
  """Saves and restores (step, sweep state, aux JSON) under `<workdir>/checkpoints`."""

  def __init__(self, workdir: str, keep: int = 3):
    if keep < 1:
      raise UserError(f"--keep_checkpoints must be at least 1, got {keep}")
    self._mngr = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state: Any, aux: dict[str, Any]) -> None:
    self._mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                  aux=ocp.args.JsonSave(aux)), force=True)
    self._mngr.wait_until_finished()

  def restore(self, step: int, like_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores the state into the structure (and shardings) of `like_state`."""
    r = self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(like_state),
                                                         aux=ocp.args.JsonRestore()))
    return r.state, r.aux

  def restore_aux(self, step: int) -> dict[str, Any]:
    """Only the JSON side of a checkpoint."""
    return self._mngr.restore(step, args=ocp.args.Composite(aux=ocp.args.JsonRestore())).aux

  def restore_raw(self, step: int) -> Any:
    """The saved state as nested dicts of arrays, without a target structure."""
    return self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state

  def close(self) -> None:
    self._mngr.close()


def _fmt(v: Any) -> str:
  return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def claim_workdir(workdir: str, identity: dict[str, Any], overwrite: bool = False) -> bool:
  """Makes `workdir` this sweep's; returns True when an earlier run of the same sweep is there.

  Raises UserError when the workdir holds a different sweep (naming the first
  differing setting) and `overwrite` is False; with `overwrite` the earlier
  sweep's outputs are removed first.
  """
  path = os.path.join(workdir, SWEEP_FILE)
  previous = None
  if os.path.exists(path):
    try:
      with open(path, encoding="utf-8") as f:
        previous = json.load(f)
    except (OSError, json.JSONDecodeError):
      previous = {"<unreadable sweep.json>": True}
  elif os.path.exists(os.path.join(workdir, "results.json")) or os.path.exists(
      os.path.join(workdir, "checkpoints")):
    previous = {"<a sweep without sweep.json>": True}
  if previous is not None and previous != identity:
    if not overwrite:
      diff = [k for k in sorted(set(previous) | set(identity)) if previous.get(k) != identity.get(k)]
      k = diff[0]
      raise UserError(
          f"--workdir={workdir} holds a different sweep (--{k} was {_fmt(previous.get(k))}, now "
          f"{_fmt(identity.get(k))}): use another --workdir, or --overwrite to replace it")
    for name in OUTPUTS:
      p = os.path.join(workdir, name)
      if os.path.isdir(p):
        shutil.rmtree(p)
      elif os.path.exists(p):
        os.remove(p)
    previous = None
  report.write_json(path, identity)
  return previous is not None
