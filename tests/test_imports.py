"""Importing the package or a CLI has no side effects; modules form no import cycle."""

import ast
import os
import pathlib
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
from nmas_jax import cpu
print(dict(os.environ) == after_jax, os.environ.get("XLA_FLAGS") == before.get("XLA_FLAGS"),
      cpu.backend_started())
"""


@pytest.mark.parametrize("module", ["nmas_jax", "experiments.sweep", "experiments.bench"])
def test_import_changes_no_environment_variable_and_starts_no_backend(module):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_dump_to=/nonexistent"}
  out = subprocess.run([sys.executable, "-c", CHECK, module], env=env, capture_output=True,
                       text=True, cwd=ROOT, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.split() == ["True", "True", "False"]


def _imports(path: pathlib.Path) -> set[str]:
  """nmas_jax modules a module imports at module level (not inside functions)."""
  found = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nmas_jax"):
      if node.module == "nmas_jax":
        found |= {a.name for a in node.names}
      else:
        found.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("nmas_jax.")}
  return found


def test_the_package_has_no_import_cycle():
  pkg = ROOT / "nmas_jax"
  graph = {p.stem: _imports(p) & {q.stem for q in pkg.glob("*.py")} - {p.stem}
           for p in pkg.glob("*.py") if p.stem != "__init__"}
  order, state = [], {}

  def visit(m, path):
    if state.get(m) == "done":
      return
    assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
    state[m] = "open"
    for n in sorted(graph[m]):
      visit(n, path + [m])
    state[m] = "done"
    order.append(m)

  for m in sorted(graph):
    visit(m, [])
  assert len(order) == len(graph) >= 20


def test_only_cpu_backend_started_touches_private_jax():
  hits = [(p.name, i + 1) for p in sorted((ROOT / "nmas_jax").glob("*.py"))
          for i, line in enumerate(p.read_text().splitlines()) if "jax._src" in line]
  assert [name for name, _ in hits] == ["cpu.py"] and len(hits) == 1
