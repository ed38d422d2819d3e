#!/usr/bin/env python3
"""Tests tf_adadelta against each TensorFlow release in the declared range.

For every TensorFlow version asked for, in a virtual environment of its own
under --work_dir, this does what a user who already has TensorFlow does:

1. `pip install tensorflow-cpu==X` (and `keras==Y` with --keras, to test the
   oldest Keras the project declares);
2. installs the project the README's way for such users, `pip install
   ".[test]"`, and checks that this installed no second TensorFlow (no
   `tensorflow` distribution appeared, `tensorflow-cpu` and a pinned Keras
   kept their versions) and what `pip check` says;
3. runs the tests (`python -m pytest -q tests`, or --pytest_args) and the main
   example with few epochs;

then prints a Markdown table: the versions read inside the environment, the
tests' result from pytest's summary line, the example's result and the
second-TensorFlow check. Each environment's result is also written to
<work_dir>/results/, so `--report` prints one table of every run so far
(runs with different selections included, each labelled).

The tests run in a copy of the source tree (the files git tracks plus
untracked ones it does not ignore, or `git archive` of --git_ref), so edits
made in the checkout while it runs do not change what is tested.

Examples:

  python .ci/version_matrix.py --versions 2.16.2 --keras 3.0.0 --keep
  python .ci/version_matrix.py --pytest_args "tests/test_parity.py -k xla"
  python .ci/version_matrix.py --report

Exits non-zero when any environment fails to install, fails a test, fails
the example or got a second TensorFlow.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The newest patch release of each TensorFlow minor in setup.py's range.
DEFAULT_VERSIONS = "2.16.2,2.17.1,2.18.1,2.19.1,2.20.0,2.21.0"
DEFAULT_PYTEST_ARGS = "tests"
DEFAULT_EXAMPLE_ARGS = "--epochs 2 --resume_epochs 1"
EXAMPLE = "savedmodel_examples/train_export_resume.py"

# Distributions that are a TensorFlow; installing any next to tensorflow-cpu
# is a second TensorFlow.
OTHER_TENSORFLOWS = ("tensorflow", "tensorflow-gpu", "tensorflow-intel",
                     "tensorflow-macos", "tf-nightly", "tf-nightly-cpu")

_READ_VERSIONS = r"""
import importlib.metadata as metadata
import json
found = {}
for name in %r:
  try:
    found[name] = metadata.version(name)
  except metadata.PackageNotFoundError:
    found[name] = None
try:
  import tensorflow as tf
  import keras
  found["tf.__version__"] = tf.__version__
  found["keras.__version__"] = keras.__version__
except Exception as e:  # Recorded, not raised: the table says it.
  found["import_error"] = repr(e)
print("VERSIONS=" + json.dumps(found))
"""

_DISTRIBUTIONS = ("tensorflow-cpu", "keras", "tensorflow-datasets",
                  "protobuf", "tensorflow-metadata", "numpy",
                  "tf_adadelta") + OTHER_TENSORFLOWS

_SUMMARY = re.compile(
    r"^=*\s*((?:\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed|"
    r"deselected|warnings?)(?:, )?)+) in [\d.]+s")


def parse_pytest_summary(output):
  """"472 passed" or "470 passed, 2 failed" from pytest's last summary line.

  Warnings and deselected tests are left out. Returns None when `output`
  has no summary line (pytest crashed or was killed).
  """
  for line in reversed(output.splitlines()):
    match = _SUMMARY.match(line.strip())
    if match:
      parts = [p for p in match.group(1).split(", ")
               if not re.search(r"warning|deselected", p)]
      return ", ".join(parts) or "no tests ran"
  return None


def _log(message):
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Environment:
  """One virtual environment: a TensorFlow version and maybe a pinned Keras."""

  def __init__(self, work_dir, tf_version, keras_version):
    self.work_dir = work_dir
    self.tf_version = tf_version
    self.keras_version = keras_version
    self.name = f"tf-{tf_version}" + (
        f"-keras-{keras_version}" if keras_version else "")
    self.path = os.path.join(work_dir, "venvs", self.name)
    self.log_dir = os.path.join(work_dir, "logs", self.name)
    self.python = os.path.join(self.path, "bin", "python")
    self.env = dict(os.environ, VIRTUAL_ENV=self.path,
                    PATH=os.path.join(self.path, "bin") + os.pathsep +
                    os.environ.get("PATH", ""),
                    PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
                    PIP_PROGRESS_BAR="off",
                    TF_CPP_MIN_LOG_LEVEL=os.environ.get(
                        "TF_CPP_MIN_LOG_LEVEL", "2"))
    for name in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV"):
      self.env.pop(name, None)

  def run(self, step, args, cwd, timeout=None, quiet=False):
    """Runs `args`, its output into <log_dir>/<step>.log; (rc, output)."""
    os.makedirs(self.log_dir, exist_ok=True)
    log_path = os.path.join(self.log_dir, f"{step}.log")
    if not quiet:
      _log(f"{self.name}: {step}: {shlex.join(args)}")
    start = time.monotonic()
    with open(log_path, "w") as log:
      log.write(f"$ {shlex.join(args)}\n")
      log.flush()
      try:
        rc = subprocess.run(args, cwd=cwd, env=self.env, stdout=log,
                            stderr=subprocess.STDOUT, timeout=timeout,
                            check=False).returncode
      except subprocess.TimeoutExpired:
        rc = 124
        log.write(f"\nTIMED OUT after {timeout} s\n")
    with open(log_path) as log:
      output = log.read()
    _log(f"{self.name}: {step}: exit {rc} in {time.monotonic() - start:.0f} s"
         f" (log: {log_path})")
    if rc:
      print("\n".join(output.splitlines()[-25:]), flush=True)
    return rc, output

  def versions(self, cwd):
    rc, output = self.run("versions",
                          [self.python, "-c", _READ_VERSIONS % (_DISTRIBUTIONS,)],
                          cwd=cwd, quiet=True)
    for line in output.splitlines():
      if line.startswith("VERSIONS="):
        return json.loads(line[len("VERSIONS="):])
    return {"import_error": f"could not read versions (exit {rc})"}


def _is_git_checkout():
  return subprocess.run(["git", "rev-parse", "--is-inside-work-tree"],
                        cwd=REPO, capture_output=True, check=False,
                        text=True).stdout.strip() == "true"


def make_source_copy(work_dir, git_ref):
  """A copy of the tree to install and test, so checkout edits don't leak in."""
  source = os.path.join(work_dir, "source")
  shutil.rmtree(source, ignore_errors=True)
  os.makedirs(source)
  if git_ref:
    archive = os.path.join(work_dir, "source.tar")
    subprocess.run(["git", "archive", "--format=tar", "-o", archive, git_ref],
                   cwd=REPO, check=True)
    with tarfile.open(archive) as tar:
      tar.extractall(source)
    os.remove(archive)
    revision = subprocess.run(["git", "rev-parse", "--short", git_ref],
                              cwd=REPO, check=True, capture_output=True,
                              text=True).stdout.strip()
  elif not _is_git_checkout():
    # An exported tree (`git archive`, a release tarball): copy it as it is.
    shutil.rmtree(source)
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        "__pycache__", ".pytest_cache", "*.egg-info", "build", ".venv*"))
    revision = "(not a git checkout)"
  else:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for relative in filter(None, files):
      src = os.path.join(REPO, relative)
      if not os.path.isfile(src):  # Deleted in the checkout, not committed.
        continue
      dst = os.path.join(source, relative)
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      shutil.copy2(src, dst)
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                              cwd=REPO, check=True, capture_output=True,
                              text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "."],
                           cwd=REPO, check=True, capture_output=True,
                           text=True).stdout.strip()
    revision += "+working tree" if dirty else ""
  return source, revision


def test_environment(environment, source, args):
  """Installs, checks and tests one environment; returns its result dict."""
  start = time.monotonic()
  result = {
      "name": environment.name,
      "tensorflow_requested": environment.tf_version,
      "keras_pinned": environment.keras_version,
      "pytest_args": args.pytest_args,
      "selection": args.selection_label or (
          "full suite" if args.pytest_args == DEFAULT_PYTEST_ARGS
          else args.pytest_args),
      "example_args": args.example_args,
      "date": datetime.date.today().isoformat(),
      "python": sys.version.split()[0],
  }

  def finish(**fields):
    result.update(fields)
    result["seconds"] = round(time.monotonic() - start)
    return result

  marker = os.path.join(environment.path, ".tensorflow_installed")
  if os.path.exists(marker):
    _log(f"{environment.name}: reusing {environment.path}")
  else:
    shutil.rmtree(environment.path, ignore_errors=True)
    rc, _ = environment.run("venv", [sys.executable, "-m", "venv",
                                     environment.path], cwd=source)
    if rc:
      return finish(install="venv failed")
    # As a user who already has TensorFlow (and maybe an older Keras).
    wanted = [f"tensorflow-cpu=={environment.tf_version}"]
    if environment.keras_version:
      wanted.append(f"keras=={environment.keras_version}")
    rc, _ = environment.run("install_tensorflow",
                            [environment.python, "-m", "pip", "install"] +
                            wanted, cwd=source)
    if rc:
      return finish(install="tensorflow-cpu install failed")
    with open(marker, "w") as f:
      f.write(" ".join(wanted) + "\n")

  before = environment.versions(source)
  # The README's install for a user with their own TensorFlow.
  rc, _ = environment.run("install_project",
                          [environment.python, "-m", "pip", "install",
                           ".[test]"], cwd=source)
  after = environment.versions(source)
  result["versions"] = after
  if rc:
    return finish(install="pip install .[test] failed")
  result["install"] = "ok"

  problems = [f"{name} {after[name]} installed" for name in OTHER_TENSORFLOWS
              if after.get(name)]
  for name in ("tensorflow-cpu",) + (
      ("keras",) if environment.keras_version else ()):
    if after.get(name) != before.get(name):
      problems.append(f"{name} {before.get(name)} -> {after.get(name)}")
  result["second_tensorflow"] = "; ".join(problems) if problems else "none"
  if "import_error" in after:
    return finish(tests="import failed: " + after["import_error"])

  rc, output = environment.run("pip_check",
                               [environment.python, "-m", "pip", "check"],
                               cwd=source)
  result["pip_check"] = "ok" if rc == 0 else "; ".join(
      line for line in output.splitlines()[1:] if line.strip())

  rc, output = environment.run(
      "pytest", [environment.python, "-m", "pytest", "-q", "-p",
                 "no:cacheprovider"] + shlex.split(args.pytest_args),
      cwd=source, timeout=args.pytest_timeout)
  summary = parse_pytest_summary(output)
  result["tests_ok"] = rc == 0
  result["tests"] = summary or f"pytest exit {rc}"
  if rc and summary and "failed" not in summary and "error" not in summary:
    result["tests"] += f" (pytest exit {rc})"

  example_dir = os.path.join(environment.work_dir, "example", environment.name)
  shutil.rmtree(example_dir, ignore_errors=True)
  rc, _ = environment.run(
      "example", [environment.python, EXAMPLE, "--output_dir", example_dir]
      + shlex.split(args.example_args), cwd=source, timeout=1800)
  result["example"] = "ok" if rc == 0 else f"failed (exit {rc})"
  return finish()


def failed(result):
  return not (result.get("install") == "ok" and result.get("tests_ok")
              and result.get("example") == "ok"
              and result.get("second_tensorflow") == "none")


def markdown_table(results):
  """The Markdown table of `results`, in TensorFlow version order."""
  header = ("| TensorFlow (tensorflow-cpu) | Keras | tensorflow-datasets | "
            "protobuf | Tests run | Tests | Example | Second TensorFlow | "
            "pip check |")
  lines = [header, "|" + "---|" * header.count(" | ") + "---|"]

  def key(result):
    numbers = [int(n) for n in re.findall(r"\d+", result["name"])]
    return numbers, result["name"]

  for result in sorted(results, key=key):
    versions = result.get("versions") or {}
    keras = versions.get("keras") or "?"
    if result.get("keras_pinned"):
      keras += " (pinned)"
    if result.get("install") != "ok":
      tests = result.get("install", "not run")
    else:
      tests = result.get("tests", "not run")
    second = result.get("second_tensorflow", "not checked")
    if second == "none":
      second = "none (tensorflow-cpu kept)"
    pip_check = result.get("pip_check", "not run")
    if len(pip_check) > 80:
      pip_check = pip_check[:77] + "..."
    cells = [versions.get("tensorflow-cpu") or result["tensorflow_requested"],
             keras, versions.get("tensorflow-datasets") or "?",
             versions.get("protobuf") or "?", result.get("selection", "?"),
             tests, result.get("example", "not run"), second, pip_check]
    lines.append("| " + " | ".join(str(c).replace("|", "\\|")
                                    for c in cells) + " |")
  return "\n".join(lines)


def load_results(work_dir):
  results = []
  folder = os.path.join(work_dir, "results")
  if os.path.isdir(folder):
    for filename in sorted(os.listdir(folder)):
      if filename.endswith(".json"):
        with open(os.path.join(folder, filename)) as f:
          results.append(json.load(f))
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n\n", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--versions", default=DEFAULT_VERSIONS,
                      help="Comma-separated tensorflow-cpu versions "
                      "(default: %(default)s).")
  parser.add_argument("--keras", default=None,
                      help="Pin this Keras version in each environment "
                      "(installed with TensorFlow, before the project), to "
                      "test the Keras floor.")
  parser.add_argument("--pytest_args", default=DEFAULT_PYTEST_ARGS,
                      help="Arguments after `python -m pytest -q` "
                      "(default: %(default)s).")
  parser.add_argument("--selection_label", default=None,
                      help="How the table names the tests run (default: "
                      "'full suite' for the default --pytest_args, else the "
                      "arguments themselves).")
  parser.add_argument("--pytest_timeout", type=int, default=3600,
                      help="Seconds before pytest is stopped.")
  parser.add_argument("--example_args", default=DEFAULT_EXAMPLE_ARGS,
                      help=f"Flags for {EXAMPLE} besides --output_dir "
                      "(default: %(default)s).")
  parser.add_argument("--work_dir", default="/tmp/tf_adadelta_matrix",
                      help="Where the environments, logs and results go.")
  parser.add_argument("--keep", action="store_true",
                      help="Keep the environments (a rerun reuses them and "
                      "does not install TensorFlow again). Without it each "
                      "is deleted after its run.")
  parser.add_argument("--git_ref", default=None,
                      help="Test `git archive` of this commit instead of the "
                      "working tree.")
  parser.add_argument("--report", action="store_true",
                      help="Only print the table of all results stored in "
                      "--work_dir.")
  args = parser.parse_args(argv)
  work_dir = os.path.abspath(args.work_dir)

  if args.report:
    results = load_results(work_dir)
    print(markdown_table(results))
    return 1 if any(map(failed, results)) else 0

  os.makedirs(os.path.join(work_dir, "results"), exist_ok=True)
  source, revision = make_source_copy(work_dir, args.git_ref)
  _log(f"testing {revision} (copied to {source})")
  results = []
  for tf_version in filter(None, (v.strip() for v in args.versions.split(","))):
    environment = Environment(work_dir, tf_version, args.keras)
    result = test_environment(environment, source, args)
    result["revision"] = revision
    results.append(result)
    with open(os.path.join(work_dir, "results", environment.name + ".json"),
              "w") as f:
      json.dump(result, f, indent=1, sort_keys=True)
    if not args.keep:
      shutil.rmtree(environment.path, ignore_errors=True)
    _log(f"{environment.name}: {'FAILED' if failed(result) else 'ok'} in "
         f"{result['seconds']} s")

  print()
  print(markdown_table(results))
  print()
  print(f"Tested {revision} with Python {sys.version.split()[0]} on "
        f"{datetime.date.today().isoformat()}; pytest args per row: "
        + "; ".join(f"{r['name']}: `{r['pytest_args']}`" for r in results))
  return 1 if any(map(failed, results)) else 0


if __name__ == "__main__":
  sys.exit(main())
