"""`savedmodel_examples/fit_keras.py` trains, saves a `.keras` file and resumes.

The example itself checks that the resumed process's losses equal this
process's; the test runs it with few examples and checks what it wrote.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "savedmodel_examples", "fit_keras.py")


def test_fit_example_resumes_from_the_keras_file_in_a_fresh_process(tmp_path):
  result = subprocess.run(
      [sys.executable, EXAMPLE, f"--output_dir={tmp_path}",
       "--train_examples=256", "--epochs=2", "--resume_epochs=2",
       "--batch_size=32"],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Resumed" in result.stdout and "agree" in result.stdout
  with open(tmp_path / "fit_metrics.json") as f:
    metrics = json.load(f)
  steps_per_epoch = 256 // 32
  assert metrics["resumed"]["iterations"] == 4 * steps_per_epoch
  np.testing.assert_allclose(metrics["resumed"]["losses"],
                             metrics["continued"]["losses"], rtol=1e-5)
  # Training went on from the saved state, not from scratch.
  assert metrics["resumed"]["losses"][0] < metrics["train"]["loss"][0]
  assert (tmp_path / "model.keras").exists()


# A `fit` killed with SIGKILL and rerun with the same flags: `BackupAndRestore`
# restores the model and this library's optimizer state, and the run ends
# exactly where an uninterrupted one does (bit for bit: same ops, same data
# order, state restored exactly).

EPOCHS = 5
KILL_FLAGS = ["--train_examples=1024", f"--epochs={EPOCHS}",
              "--resume_epochs=1", "--batch_size=32"]


def _run_example(output_dir, log_path=None, wait=True):
  argv = [sys.executable, EXAMPLE, f"--output_dir={output_dir}", *KILL_FLAGS]
  if wait:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr
  with open(log_path, "w") as log:
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


def _backed_up_epoch(path):
  try:
    with open(path) as f:
      return json.load(f)["epoch"]
  except (OSError, ValueError, KeyError):
    return None


def _state(output_dir):
  """The saved model's weights and optimizer variables, as arrays."""
  import keras  # pylint: disable=g-import-not-at-top
  import tf_adadelta  # pylint: disable=g-import-not-at-top,unused-import
  model = keras.models.load_model(os.path.join(output_dir, "model.keras"))
  return ([w.numpy() for w in model.weights] +
          [v.numpy() for v in model.optimizer.variables])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp("fit_uninterrupted"))
  _run_example(output_dir)
  with open(os.path.join(output_dir, "fit_metrics.json")) as f:
    return output_dir, json.load(f)


@pytest.mark.parametrize("damage", ["none", "newest_backup_truncated"])
def test_fit_example_killed_and_rerun_ends_like_the_uninterrupted_run(
    tmp_path, uninterrupted, damage):
  reference_dir, reference = uninterrupted
  output_dir = str(tmp_path / "out")
  backup = os.path.join(output_dir, "backup")
  metadata = os.path.join(backup, "training_metadata.json")
  proc = _run_example(output_dir, str(tmp_path / "killed.log"), wait=False)
  deadline = time.monotonic() + 600
  # SIGKILL as soon as the newest backup is of epoch 2 and the previous one
  # of epoch 1: the metadata is the last file a backup writes, so the kill
  # lands in the training of epoch 3, not while a backup is half written.
  while ((_backed_up_epoch(metadata) or 0) < 2 or
         (_backed_up_epoch(metadata + ".bkp") or 0) < 1):
    assert proc.poll() is None, open(tmp_path / "killed.log").read()[-3000:]
    assert time.monotonic() < deadline, "no two backups in time"
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL
  newest = _backed_up_epoch(metadata)
  previous = _backed_up_epoch(metadata + ".bkp")
  assert newest is not None and previous is not None
  assert 2 <= newest < EPOCHS, "the run finished before the kill"
  assert previous == newest - 1
  restored = newest
  if damage == "newest_backup_truncated":
    weights = os.path.join(backup, "latest.weights.h5")
    with open(weights, "r+b") as f:
      f.truncate(os.path.getsize(weights) // 3)
    restored = previous

  log = _run_example(output_dir)
  epochs_run = [int(epoch) for epoch in
                re.findall(rf"^Epoch (\d+)/{EPOCHS}$", log, re.M)]
  # Restored, not started over: the rerun trains only the epochs after the
  # backup it restored.
  assert epochs_run == list(range(restored + 1, EPOCHS + 1))
  with open(os.path.join(output_dir, "fit_metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["train"]["loss"] == reference["train"]["loss"][restored:]
  assert metrics["resumed"] == reference["resumed"]
  assert metrics["continued"] == reference["continued"]
  for got, want in zip(_state(output_dir), _state(reference_dir)):
    np.testing.assert_array_equal(got, want)
  assert not os.path.exists(backup)  # Deleted once training finished.
