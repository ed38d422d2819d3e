"""BUILD lists every module, test and example in the tree.

The checks that need no Bazel: this test parses BUILD as Starlark-shaped
Python and checks its targets against the files on disk, and that every
py_test target runs its file's tests with pytest. `bazel test` itself runs the
targets (README, "Development"; CI runs a subset).
"""

import ast
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTEST_MAIN = "tests/bazel_pytest_main.py"


def _calls():
  """Returns [(rule, {attribute: expression})] for BUILD's named targets."""
  with open(os.path.join(ROOT, "BUILD")) as f:
    tree = ast.parse(f.read(), filename="BUILD")
  calls = []
  for node in tree.body:
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
      continue
    call = node.value
    kwargs = {k.arg: k.value for k in call.keywords}
    if "name" in kwargs:
      calls.append((call.func.id, kwargs))
  return calls


def _targets():
  """Returns {rule: [(name, srcs)]} read from BUILD."""
  targets = {}
  for rule, kwargs in _calls():
    srcs = ast.literal_eval(kwargs["srcs"]) if "srcs" in kwargs else []
    targets.setdefault(rule, []).append(
        (ast.literal_eval(kwargs["name"]), srcs))
  return targets


def _files(folder, pattern):
  found = []
  for dirpath, _, filenames in os.walk(os.path.join(ROOT, folder)):
    if "__pycache__" in dirpath:
      continue
    for filename in filenames:
      if re.fullmatch(pattern, filename):
        found.append(os.path.relpath(os.path.join(dirpath, filename), ROOT))
  return sorted(found)


def _srcs(rules):
  targets = _targets()
  return {src for rule in rules for _, srcs in targets.get(rule, [])
          for src in srcs}


def test_every_module_is_in_a_library():
  missing = set(_files("tf_adadelta", r".*\.py")) - _srcs(["py_library"])
  assert not missing, f"Add to the py_library in BUILD: {sorted(missing)}"


def test_every_test_file_has_a_py_test():
  tests = set(_files("tests", r"test_.*\.py"))
  missing = tests - _srcs(["py_test"])
  assert not missing, f"Add py_test targets to BUILD: {sorted(missing)}"


def test_every_example_and_benchmark_has_a_py_binary():
  programs = set(_files("savedmodel_examples", r"[a-z].*\.py")) | set(
      _files("benchmarks", r"[a-z].*\.py"))
  listed = _srcs(["py_binary", "py_library"])
  missing = programs - listed
  assert not missing, f"Add py_binary targets to BUILD: {sorted(missing)}"


def test_every_listed_file_exists():
  for rule, targets in _targets().items():
    for name, srcs in targets:
      for src in srcs:
        assert os.path.exists(os.path.join(ROOT, src)), (rule, name, src)


def test_target_names_are_unique():
  names = [name for targets in _targets().values() for name, _ in targets]
  assert len(names) == len(set(names))


def test_every_py_test_runs_its_file_with_pytest():
  """Each py_test's main is the shared pytest main, given the test file.

  Bazel runs a py_test's main as a script; a test file run that way only
  defines its tests and exits 0, so a target without the shared main passes
  whatever its tests do.
  """
  py_tests = [kwargs for rule, kwargs in _calls() if rule == "py_test"]
  assert py_tests
  for kwargs in py_tests:
    name = ast.literal_eval(kwargs["name"])
    srcs = ast.literal_eval(kwargs["srcs"])
    tests = [src for src in srcs if src != PYTEST_MAIN]
    assert tests == [f"tests/{name}.py"], (name, srcs)
    assert PYTEST_MAIN in srcs, name
    assert "main" in kwargs, name
    assert ast.literal_eval(kwargs["main"]) == PYTEST_MAIN, name
    args = ast.literal_eval(kwargs["args"]) if "args" in kwargs else []
    assert args[:1] == tests, (name, args)
