"""How a setting is declared, and what derives from the declarations.

A setting is one dataclass field made by `setting(...)`: default, type, help text and check.
From the declarations of a settings class follow its absl flags (`define_flags`,
`from_flags`), the flags file (`flags_text`), a workdir's identity (`identity`) and every check
(`Declared.__post_init__`). The settings themselves are declared in `nmas_jax.config`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

from nmas_jax.errors import UserError

# Checks a setting can declare: name -> (test, what the error says the value must be).
_CHECKS = {
  "positive_int": (
    lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
    "a positive integer",
  ),
  "nonneg_int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, ">= 0"),
  "positive": (lambda v: v > 0, "positive"),
  "nonneg": (lambda v: v >= 0, ">= 0"),
  "(0,1)": (lambda v: 0 < v < 1, "in (0, 1)"),
  "[0,1)": (lambda v: 0 <= v < 1, "in [0, 1)"),
  "(0,1]": (lambda v: 0 < v <= 1, "in (0, 1]"),
}


def setting(
  default: Any,
  help: str,
  *,
  choices: Sequence[str] | None = None,
  check: str | None = None,
  kind: str | None = None,
  identity: bool = True,
  flag: bool = True,
  record: bool = True,
  path: bool = False,
  example: str = "",
) -> Any:
  """Declares one setting (a dataclass field).

  Args:
    default: its default (also the flag's).
    help: the flag's help text (choices are appended).
    choices: allowed string values.
    check: a key of `_CHECKS`, applied unless the value is None.
    kind: how the flag parses: "bool", "int", "float", "string", "ints" (a
      comma-separated list of integers, held as a tuple), "range" ("low,high": two positive
      floats, low < high, held as a tuple), "rate_range" (the same in [0, 1)) or "list" (of
      strings, held as a tuple) or "names" (a comma-separated list of `choices`, each
      at most once, held as the string); inferred from the default when it is a scalar.
    identity: part of the workdir's identity (a workdir holds one sweep).
    flag: has a command-line flag. record: written to flags.txt.
    path: a file path (the identity records it absolute).
    example: a valid value, quoted by the error for a bad "ints" list.
  """
  if kind is None:
    kind = {bool: "bool", int: "int", float: "float", str: "string"}[type(default)]
  return dataclasses.field(
    default=default,
    metadata=dict(
      help=help,
      choices=tuple(choices) if choices else None,
      check=check,
      kind=kind,
      identity=identity,
      flag=flag,
      record=record,
      path=path,
      example=example,
    ),
  )


def parse_ints(
  text: str | Sequence[Any],
  name: str = "latents",
  example: str = "10,25,50",
  empty: bool = False,
  zero: bool = False,
) -> tuple[int, ...]:
  """'10,25,50' (or a sequence) -> (10, 25, 50): distinct positive integers (or 0 too, with
  `zero`), with a one-line error naming --`name` for anything else (and for an empty list unless
  `empty`)."""
  items = (
    [t.strip() for t in text.split(",")]
    if isinstance(text, str)
    else [str(t).strip() for t in text]
  )
  items = [t for t in items if t]
  if not items and not empty:
    raise UserError(f"--{name} is empty: give positive integers, e.g. --{name}={example}")
  out: list[int] = []
  for t in items:
    try:
      k = int(t)
    except ValueError:
      raise UserError(
        f"--{name} has {t!r}, not an integer: give positive integers, e.g. --{name}={example}"
      ) from None
    if k < 0 or (k == 0 and not zero):
      noun = {"latents": "latent sizes"}.get(name, name.replace("_", " "))
      raise UserError(f"--{name} has {k}: {noun} must be positive integers")
    if k in out:
      raise UserError(f"--{name} lists {k} twice: give each value once")
    out.append(k)
  return tuple(out)


def parse_range(text: str | Sequence[Any], name: str, rate: bool = False) -> tuple[float, float]:
  """'1e-5,5e-3' (or a pair) -> (1e-05, 0.005), with a one-line error naming --`name` unless it
  is two positive numbers, the first below the second (with `rate`: two numbers in [0, 1))."""
  items = [t.strip() for t in text.split(",")] if isinstance(text, str) else list(text)
  try:
    lo, hi = (float(t) for t in items)
  except (TypeError, ValueError):
    lo = hi = float("nan")
  given = text if isinstance(text, str) else ",".join(map(str, text))
  if rate and not 0 <= lo < hi < 1:
    raise UserError(
      f"--{name}={given} is not a range of rates: give two numbers in [0, 1), low first, e.g. "
      f"--{name}=0,0.6"
    )
  if not rate and not 0 < lo < hi:
    raise UserError(
      f"--{name}={given} is not a range: give two positive numbers, low first, e.g. "
      f"--{name}=1e-5,5e-3"
    )
  return lo, hi


def parse_latents(text: str | Sequence[Any]) -> tuple[int, ...]:
  """'10,25,50' (or a sequence) -> (10, 25, 50), with a one-line error for anything else."""
  return parse_ints(text, "latents", "10,25,50,75,150")


class Declared:
  """Checks and normalises every declared field on construction (UserError on a bad value)."""

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.metadata["kind"] == "ints":
        value = parse_ints(
          value, f.name, f.metadata["example"], empty=not f.default, zero=f.name == "latents"
        )  # 0: a band count of --model=multiscale
      elif f.metadata["kind"] in ("range", "rate_range"):
        value = parse_range(value, f.name, rate=f.metadata["kind"] == "rate_range")
      elif f.metadata["kind"] == "list":
        value = tuple(str(v) for v in value)
      elif f.metadata["kind"] == "names" and value is not None:
        value = ",".join(str(v).strip() for v in ([value] if isinstance(value, str) else value))
      object.__setattr__(self, f.name, value)
      _check(f, value)
    self._check_together()

  def _check_together(self) -> None:
    """Checks that involve several settings (none by default)."""


def _check(f: dataclasses.Field, value: Any) -> None:
  m = f.metadata
  if value is None:
    return
  many = {"list": value, "names": str(value).split(",")}.get(m["kind"], (value,))
  for v in many:
    if m["choices"] and v not in m["choices"]:
      raise UserError(f"unknown --{f.name}={v!r}: choose one of {', '.join(m['choices'])}")
  if m["kind"] == "names" and len(set(many)) != len(many):
    raise UserError(f"--{f.name}={value} names one value twice: give each once")
  if m["check"]:
    test, must = _CHECKS[m["check"]]
    try:
      ok = bool(test(value))
    except TypeError:
      ok = False
    if not ok:
      raise UserError(f"--{f.name} must be {must}, got {value}")


def fields(obj: Any) -> list[dataclasses.Field]:
  """The declared settings of a settings class or instance."""
  return list(dataclasses.fields(obj))


def names(cls: type) -> list[str]:
  return [f.name for f in dataclasses.fields(cls)]


def build(cls: type, values: dict[str, Any]) -> Any:
  """cls(**values), with a ValueError naming an unknown setting instead of a TypeError."""
  unknown = sorted(set(values) - set(names(cls)))
  if unknown:
    raise ValueError(
      f"unknown setting(s) {', '.join(map(repr, unknown))} for {cls.__name__}; "
      f"valid: {', '.join(names(cls))}"
    )
  return cls(**values)


def define_flags(*classes: type, flag_values: Any = None) -> None:
  """Defines one absl flag per declared setting of `classes` (same names, defaults and help)."""
  from absl import flags

  fv = flags.FLAGS if flag_values is None else flag_values
  define = {
    "bool": flags.DEFINE_bool,
    "int": flags.DEFINE_integer,
    "float": flags.DEFINE_float,
    "string": flags.DEFINE_string,
    "names": flags.DEFINE_string,
    "list": flags.DEFINE_list,
  }
  for cls in classes:
    for f in dataclasses.fields(cls):
      m = f.metadata
      if not m["flag"]:
        continue
      text = m["help"] + (f" One of: {', '.join(m['choices'])}." if m["choices"] else "")
      if m["kind"] in ("ints", "range", "rate_range"):
        flags.DEFINE_string(f.name, ",".join(map(str, f.default)), text, flag_values=fv)
      elif m["kind"] == "list":
        flags.DEFINE_list(f.name, list(f.default), text, flag_values=fv)
      else:
        define[m["kind"]](f.name, f.default, text, flag_values=fv)


def from_flags(cls: type, flag_values: Any) -> Any:
  """An instance of `cls` from parsed flags (UserError on a bad value)."""
  return cls(
    **{f.name: flag_values[f.name].value for f in dataclasses.fields(cls) if f.metadata["flag"]}
  )


def identity(*instances: Any) -> dict[str, Any]:
  """What defines a sweep in its workdir: the identity settings of `instances`, JSON-ready."""
  out: dict[str, Any] = {}
  for obj in instances:
    for f in dataclasses.fields(obj):
      if not f.metadata["identity"]:
        continue
      v = getattr(obj, f.name)
      if f.metadata["path"] and v:
        v = os.path.abspath(v)
      out[f.name] = list(v) if isinstance(v, tuple) else v
  return out


def flags_text(*instances: Any) -> str:
  """The command-line flags that repeat these settings (flags.txt, `--flagfile`)."""
  lines = []
  for obj in instances:
    for f in dataclasses.fields(obj):
      v = getattr(obj, f.name)
      if not (f.metadata["flag"] and f.metadata["record"]) or v is None:
        continue
      lines.append(f"--{f.name}={','.join(map(str, v)) if isinstance(v, tuple) else v}")
  return "\n".join(lines) + "\n"
