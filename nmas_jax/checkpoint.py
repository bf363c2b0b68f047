"""Checkpoints of a whole sweep (orbax) and the workdir's identity.

A workdir belongs to one sweep: `sweep.json` records the schema version and
the settings that define it (`config.identity`). Re-running the same command
resumes from the latest checkpoint; a different sweep, or one written by
another version of nmas-jax, is refused unless the caller overwrites.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import orbax.checkpoint as ocp

from nmas_jax import files
from nmas_jax.errors import UserError

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
    """Saves `state` and the JSON `aux` (which gains `schema_version`) as checkpoint `step`."""
    aux = {"schema_version": files.SCHEMA_VERSION, **aux}
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


def _differs(workdir: str, previous: dict[str, Any], identity: dict[str, Any]) -> str:
  """One line saying how the sweep in `workdir` differs from `identity` (the first differing setting)."""
  version = previous.get("schema_version", 1)
  if version != files.SCHEMA_VERSION:
    age = "an older" if version < files.SCHEMA_VERSION else "a newer"
    return (f"--workdir={workdir} was written by {age} version of nmas-jax (schema {version}, "
            f"this one reads {files.SCHEMA_VERSION})")
  before = previous.get("identity", {})
  k = next(k for k in sorted(set(before) | set(identity)) if before.get(k) != identity.get(k))
  return (f"--workdir={workdir} holds a different sweep (--{k} was {_fmt(before.get(k))}, now "
          f"{_fmt(identity.get(k))})")


def claim_workdir(workdir: str, identity: dict[str, Any], overwrite: bool = False) -> bool:
  """Makes `workdir` this sweep's; returns True when an earlier run of the same sweep is there.

  Raises UserError when the workdir holds a different sweep (naming the first
  differing setting) or one of another schema version, and `overwrite` is
  False; with `overwrite` the earlier sweep's outputs are removed first.
  """
  path = os.path.join(workdir, SWEEP_FILE)
  mine = {"schema_version": files.SCHEMA_VERSION, "identity": identity}
  previous = None
  if os.path.exists(path):
    try:
      previous = files.read_json(path)
    except (OSError, json.JSONDecodeError):
      previous = {"schema_version": files.SCHEMA_VERSION, "identity": {"<unreadable sweep.json>": True}}
    if not isinstance(previous, dict):
      previous = {"schema_version": files.SCHEMA_VERSION, "identity": {"<unreadable sweep.json>": True}}
  elif os.path.exists(os.path.join(workdir, "results.json")) or os.path.exists(
      os.path.join(workdir, "checkpoints")):
    previous = {"schema_version": files.SCHEMA_VERSION,
                "identity": {"<a sweep without sweep.json>": True}}
  if previous is not None and previous != mine:
    if not overwrite:
      raise UserError(f"{_differs(workdir, previous, identity)}: use another --workdir, or "
                      "--overwrite to replace it")
    for name in OUTPUTS:
      p = os.path.join(workdir, name)
      if os.path.isdir(p):
        shutil.rmtree(p)
      elif os.path.exists(p):
        os.remove(p)
    previous = None
  files.write_json(path, mine)
  return previous is not None


def prepare_workdir(path: str) -> None:
  """Creates `path` and checks it is writable (UserError otherwise)."""
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".write_test.{os.getpid()}")
    with open(probe, "w", encoding="utf-8"):
      pass
    os.remove(probe)
  except OSError as e:
    raise UserError(f"cannot write to --workdir={path}: {e.strerror or e}") from None
