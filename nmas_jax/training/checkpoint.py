"""Checkpoints of a whole sweep (orbax) and the workdir's identity.

A workdir belongs to one sweep: `sweep.json` records the schema version and
the settings that define it (`declare.identity`). Re-running the same command
resumes from the latest checkpoint; a different sweep, or one written by
another version of nmas-jax, is refused unless the caller overwrites.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp

from nmas_jax import files
from nmas_jax.errors import UserError, WriteError

SWEEP_FILE = "sweep.json"
TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a checkpoint directory orbax has not finished
# What a sweep leaves in its workdir; --overwrite removes exactly these.
OUTPUTS = (
  "checkpoints",
  "checkpoints_unreadable",
  "heartbeats",
  "tb",
  "metrics.jsonl",
  "results.json",
  "results.csv",
  "sweep.png",
  "spectrum.png",
  "decoding.png",
  "report.md",
  "flags.txt",
  SWEEP_FILE,
)


class Checkpointer:
  """Saves and restores (step, sweep state, aux JSON) under `<workdir>/checkpoints`.

  Faults it survives: a partial temporary directory left by a crash is
  removed (never restored); a checkpoint that cannot be read (truncated,
  missing files, wrong structure) is moved aside to `checkpoints_unreadable/`
  and the one before it is used (`restore_latest`); a save that fails raises
  a one-line `WriteError` and leaves the earlier checkpoints as they were.
  """

  def __init__(self, workdir: str, keep: int = 3, log: Callable[[str], None] = print):
    self._dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._aside = self._dir + "_unreadable"
    self._keep, self._log = keep, log
    if jax.process_index() == 0 and os.path.isdir(self._dir):
      for name in sorted(os.listdir(self._dir)):
        if TMP_MARK in name:
          shutil.rmtree(os.path.join(self._dir, name), ignore_errors=True)
          log(f"removed {name}, a partial checkpoint left by an interrupted save")
    self._mngr = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
      self._dir,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=self._keep, create=True, enable_async_checkpointing=False
      ),
    )

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state: Any, aux: dict[str, Any]) -> None:
    """Saves `state` and the JSON `aux` (which gains `schema_version`) as checkpoint `step`."""
    aux = {"schema_version": files.SCHEMA_VERSION, **aux}
    try:
      self._mngr.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), aux=ocp.args.JsonSave(aux)),
        force=True,
      )
      self._mngr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 - orbax wraps OS errors in its own types
      raise WriteError(os.path.join(self._dir, str(step)), _cause(e)) from e

  def restore(self, step: int, like_state: Any) -> tuple[Any, dict[str, Any]]:
    """Restores the state into the structure (and shardings) of `like_state`."""
    r = self._mngr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(like_state), aux=ocp.args.JsonRestore()
      ),
    )
    return r.state, r.aux

  def restore_latest(self, like_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """(step, state, aux) of the newest readable checkpoint, None when there is none at all.

    Each unreadable one is reported in one line and moved aside; when every
    checkpoint was unreadable, a UserError suggests --overwrite.
    """
    moved = False
    while (step := self.latest_step()) is not None:
      try:
        state, aux = self.restore(step, like_state)
        if aux.get("schema_version") != files.SCHEMA_VERSION:
          raise ValueError(f"schema {aux.get('schema_version')}")
        return step, state, aux
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is the same fault
        moved = True
        dest = self._move_aside(step)
        self._log(
          f"warning: the checkpoint at step {step} cannot be read ({type(e).__name__}): "
          f"moved it to {dest}; trying the one before"
        )
    if moved:
      raise UserError(
        f"no readable checkpoint in {self._dir} (the unreadable ones are in "
        f"{self._aside}): rerun with --overwrite to start again"
      )
    return None

  def _move_aside(self, step: int) -> str:
    dest = os.path.join(self._aside, str(step))
    if jax.process_index() == 0:
      os.makedirs(self._aside, exist_ok=True)
      if os.path.exists(dest):
        shutil.rmtree(dest)
      os.rename(os.path.join(self._dir, str(step)), dest)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"moved aside checkpoint {step}")
    self._mngr.close()
    self._mngr = self._open()
    return dest

  def restore_aux(self, step: int) -> dict[str, Any]:
    """Only the JSON side of a checkpoint."""
    return self._mngr.restore(step, args=ocp.args.Composite(aux=ocp.args.JsonRestore())).aux

  def restore_raw(self, step: int) -> Any:
    """The saved state as nested dicts of arrays, without a target structure."""
    return self._mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state

  def close(self) -> None:
    self._mngr.close()


def latest_complete_step(workdir: str) -> int | None:
  """The newest finished checkpoint's step, from the directory alone (safe from any thread)."""
  try:
    steps = [int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()]
  except OSError:
    return None
  return max(steps, default=None)


def _cause(e: BaseException) -> BaseException:
  """The innermost OSError behind an exception (orbax wraps them), else the exception itself."""
  seen = e
  while seen is not None:
    if isinstance(seen, OSError):
      return seen
    seen = seen.__cause__ or seen.__context__
  return e


def _fmt(v: Any) -> str:
  return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _differs(workdir: str, previous: dict[str, Any], identity: dict[str, Any]) -> str:
  """One line saying how the sweep in `workdir` differs from `identity` (the first differing
  setting)."""
  version = previous.get("schema_version", 1)
  if version != files.SCHEMA_VERSION:
    age = "an older" if version < files.SCHEMA_VERSION else "a newer"
    return (
      f"--workdir={workdir} was written by {age} version of nmas-jax (schema {version}, "
      f"this one reads {files.SCHEMA_VERSION})"
    )
  before = previous.get("identity", {})
  k = next(k for k in sorted(set(before) | set(identity)) if before.get(k) != identity.get(k))
  return (
    f"--workdir={workdir} holds a different sweep (--{k} was {_fmt(before.get(k))}, now "
    f"{_fmt(identity.get(k))})"
  )


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
      previous = {
        "schema_version": files.SCHEMA_VERSION,
        "identity": {"<unreadable sweep.json>": True},
      }
    if not isinstance(previous, dict):
      previous = {
        "schema_version": files.SCHEMA_VERSION,
        "identity": {"<unreadable sweep.json>": True},
      }
  elif os.path.exists(os.path.join(workdir, "results.json")) or os.path.exists(
    os.path.join(workdir, "checkpoints")
  ):
    previous = {
      "schema_version": files.SCHEMA_VERSION,
      "identity": {"<a sweep without sweep.json>": True},
    }
  if previous is not None and previous != mine:
    if not overwrite:
      raise UserError(
        f"{_differs(workdir, previous, identity)}: use another --workdir, or "
        "--overwrite to replace it"
      )
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
