"""Importing the package or a CLI has no side effects; modules form no import cycle."""

import ast
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

CHECK = """
import os, sys
before = dict(os.environ)
import jax
after_jax = dict(os.environ)  # jax's own import sets a few variables (e.g. TF_CPP_MIN_LOG_LEVEL)
import importlib
importlib.import_module(sys.argv[1])
from nmas_jax.training import cpu
print(dict(os.environ) == after_jax, os.environ.get("XLA_FLAGS") == before.get("XLA_FLAGS"),
      cpu.backend_started())
"""


@pytest.mark.parametrize("module", ["nmas_jax", "experiments.sweep", "experiments.bench"])
def test_import_changes_no_environment_variable_and_starts_no_backend(module):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_dump_to=/nonexistent"}
  out = subprocess.run(
    [sys.executable, "-c", CHECK, module],
    env=env,
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["True", "True", "False"]


def _module(path: pathlib.Path) -> str:
  """nmas_jax/training/sweep.py -> nmas_jax.training.sweep (a package: its __init__'s name)."""
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
  """nmas_jax modules a module imports at module level (not inside functions)."""
  found = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nmas_jax"):
      for a in node.names:  # `from nmas_jax.data import splits` imports a module
        sub = f"{node.module}.{a.name}"
        found.add(sub if sub in known else node.module)
    elif isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("nmas_jax")}
  return found


def _sources() -> list[pathlib.Path]:
  return sorted((ROOT / "nmas_jax").rglob("*.py"))


def test_the_package_has_no_import_cycle():
  """No module imports, at module level, a module that imports it back (a package counts as
  its __init__, which only re-exports its modules)."""
  known = {_module(p) for p in _sources()}
  graph = {_module(p): _imports(p, known) - {_module(p)} for p in _sources()}
  order, state = [], {}

  def visit(m, path):
    if state.get(m) == "done":
      return
    assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
    state[m] = "open"
    for n in sorted(graph[m]):
      if not m.startswith(n + "."):  # a module's own package is being imported already
        visit(n, path + [m])
    state[m] = "done"
    order.append(m)

  for m in sorted(graph):
    visit(m, [])
  assert len(order) == len(graph) >= 30


def test_models_import_nothing_of_the_settings_or_the_cli():
  """A Flax user imports the model families with only jax and flax: no nmas_jax module outside
  nmas_jax.models is loaded."""
  code = (
    "import sys, nmas_jax.models; print(sorted(m for m in sys.modules if m.startswith('nmas_jax')))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    cwd=ROOT,
    env={**os.environ, "PYTHONPATH": str(ROOT)},
    timeout=120,
  )
  assert out.returncode == 0, out.stderr[-2000:]
  loaded = eval(out.stdout)
  assert "nmas_jax.models.lfads" in loaded
  assert [m for m in loaded if m != "nmas_jax" and not m.startswith("nmas_jax.models")] == []


# What a branch on the model kind looks like: a class test, a comparison with a family's name,
# or a probe of a family's parameter names.
KIND_BRANCHES = [
  r"isinstance\([^)]*(LSTMAutoencoder|MultiscaleAutoencoder|LFADS)",
  r"type\([^)]*\) is ",
  r"model\s*[!=]=",
  r"[!=]=\s*\"(autoencoder|lfads|multiscale)\"",
  r"\"(autoencoder|lfads|multiscale)\"\s*[!=]=",
  r"\"decoder_net\"",
  r"in state\.params",
]


def test_nothing_outside_the_models_branches_on_the_model_kind():
  """Every family declares what the pipeline needs (`models.Family`); the pipeline asks that,
  never which family a model is."""
  hits = []
  for p in _sources():
    if "models" in p.relative_to(ROOT).parts:
      continue
    for i, line in enumerate(p.read_text().splitlines()):
      hits += [
        f"{p.relative_to(ROOT)}:{i + 1}: {line.strip()}"
        for pattern in KIND_BRANCHES
        if re.search(pattern, line)
      ]
  assert hits == []


def test_only_cpu_backend_started_touches_private_jax():
  hits = [
    (p.relative_to(ROOT).as_posix(), i + 1)
    for p in _sources()
    for i, line in enumerate(p.read_text().splitlines())
    if "jax._src" in line
  ]
  assert [name for name, _ in hits] == ["nmas_jax/training/cpu.py"] and len(hits) == 1


def test_no_module_over_400_lines_and_no_function_over_80():
  """A module past 400 lines is asking to be split by concern, a function past 80 by step."""
  long_modules, long_functions = [], []
  for p in _sources():
    text = p.read_text()
    if len(text.splitlines()) > 400:
      long_modules.append(p.relative_to(ROOT).as_posix())
    for node in ast.walk(ast.parse(text)):
      if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        if node.end_lineno - node.lineno + 1 > 80:
          long_functions.append(f"{p.relative_to(ROOT).as_posix()}:{node.name}")
  assert long_modules == [] and long_functions == []
