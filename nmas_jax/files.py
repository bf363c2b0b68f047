"""Atomic file writing: a reader never sees a half-written file, and a failed write leaves the
old one."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from nmas_jax.errors import WriteError

# Bumped whenever results.json, sweep.json or a checkpoint changes incompatibly, or a resumed
# run would no longer equal an uninterrupted one (4: models initialised per latent unit; 5:
# lorenz_trials whitened, and --lr_half_life in the identity; 6: make_multiscale with equal
# signal shares; 7: make_lorenz(whiten=True) through _standardise's signed axes). Resuming a
# workdir written with another version is refused with a one-line error
# (checkpoint.claim_workdir).
SCHEMA_VERSION = 7


def atomic_write(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
  """Calls write(file) on a temporary file next to `path`, then renames it into place.

  An OSError (no space, no permission, a parent that is a file) becomes a
  `WriteError` naming the path; the file that was there stays as it was.
  """
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
      write(f)
    os.replace(tmp, path)
  except OSError as e:
    raise WriteError(path, e) from e
  finally:
    if os.path.exists(tmp):
      try:
        os.remove(tmp)
      except OSError:
        pass


def write_json(path: str, obj: Any) -> None:
  atomic_write(path, lambda f: json.dump(obj, f, indent=1))


def write_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text))


def read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)
