"""The benchmark script runs end to end on a tiny workload and prints a table.

Only that it runs and what it reports are checked; no timing is asserted.
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_run_prints_a_row_per_contender():
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "benchmark_adadelta.py"),
       "--quick", "--workloads=large,embedding,mirrored",
       "--configs=default,featured,accumulation"],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [[cell.strip() for cell in line.strip("|").split("|")]
          for line in result.stdout.splitlines() if line.startswith("| ")]
  header, body = rows[0], rows[1:]
  assert header[:6] == ["workload", "config", "phase", "contender", "ms/step",
                        "GB/s"]
  seen = {(row[1], row[2], row[3]) for row in body}
  for config in ("default", "featured"):
    assert (config, "step", "keras") in seen
    assert (config, "step", "tf_adadelta") in seen
    assert (config, "step", "memory reference") in seen
  assert ("default", "step", "fused kernel") in seen
  assert ("accumulation", "apply step", "tf_adadelta") in seen
  assert ("accumulation", "micro-step", "tf_adadelta") in seen
  assert ("accumulation", "micro-step", "accumulator RMW") in seen
  for devices in ("1 device", "2 devices"):
    for name in ("keras", "tf_adadelta"):
      assert ("default", "step", f"{name}, {devices}") in seen
  for row in body:
    assert float(row[4]) > 0


def test_fit_benchmark_quick_run_prints_both_contenders():
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, "benchmarks", "benchmark_fit.py"),
       "--quick"],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [[cell.strip() for cell in line.strip("|").split("|")]
          for line in result.stdout.splitlines() if line.startswith("| ")]
  assert rows[0] == ["config", "contender", "ms/step", "vs keras",
                     "first fit (s)"]
  seen = {(row[0], row[1]) for row in rows[1:]}
  assert seen == {(c, n) for c in ("plain", "featured")
                  for n in ("keras", "tf_adadelta")}
  for row in rows[1:]:
    assert float(row[2]) > 0 and float(row[4]) > 0


def test_first_step_benchmark_quick_run_prints_both_tables():
  result = subprocess.run(
      [sys.executable,
       os.path.join(ROOT, "benchmarks", "benchmark_first_step.py"), "--quick",
       "--contenders=fused kernel,tf_adadelta,keras"],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = [[cell.strip() for cell in line.strip("|").split("|")]
          for line in result.stdout.splitlines() if line.startswith("| ")]
  contenders = ("fused kernel", "tf_adadelta", "keras")
  first_step = {row[0]: row for row in rows if row[0] in contenders}
  assert set(first_step) == set(contenders)
  assert first_step["fused kernel"][2] == "1.0x"
  assert first_step["tf_adadelta"][3].endswith("x faster")
  scaling = [row for row in rows if row[0] in ("2", "8")]
  assert {(row[0], row[1]) for row in scaling} == {
      (n, c) for n in ("2", "8") for c in contenders[1:]}
  for row in scaling:
    assert float(row[2]) > 0 and float(row[3]) > 0


def test_first_step_benchmark_times_the_keras_face():
  spec = json.dumps({"contender": "tf_adadelta.keras featured",
                     "shapes": [[3, 3], [4]], "steady_rounds": 2})
  result = subprocess.run(
      [sys.executable,
       os.path.join(ROOT, "benchmarks", "benchmark_first_step.py"),
       "--child", spec],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith("RESULT=")][-1]
  timings = json.loads(line[len("RESULT="):])
  assert timings["first_s"] > timings["steady_s"] > 0
