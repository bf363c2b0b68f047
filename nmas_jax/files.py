"""Atomic file writing: a reader never sees a half-written file, and a failed write leaves the old one."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

# Bumped whenever results.json, sweep.json or a checkpoint changes incompatibly. Resuming a
# workdir written with another version is refused with a one-line error (checkpoint.claim_workdir).
SCHEMA_VERSION = 2


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
  """Calls write(file) on a temporary file next to `path`, then renames it into place."""
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
      write(f)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
  atomic_write(path, lambda f: json.dump(obj, f, indent=1))


def write_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text))


def read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)
