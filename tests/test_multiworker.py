"""MultiWorkerMirroredStrategy with two worker processes equals one device.

Two processes (`multiworker_worker.py`) form a cluster on 127.0.0.1, each
training on half of the global batch; their variables, slots and counters
must equal a one-device run on the whole batch, and the chief's checkpoint
must restore on one device.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import distributed_model as dm

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "multiworker_worker.py")
# Keras variables too, for the settings that take every decision at once.
SETTINGS = sorted(dm.OPTIMIZER_SETTINGS) + [
    dm.KERAS_PREFIX + "combined", dm.KERAS_PREFIX + "lazy",
    dm.KERAS_FACE_PREFIX + "combined"]
TIMEOUT_S = 240


@pytest.fixture(scope="module")
def cluster_output(tmp_path_factory):
  """Runs the two workers once for every setting; returns their folder."""
  out_dir = str(tmp_path_factory.mktemp("multiworker"))
  workers = [f"127.0.0.1:{port}" for port in dm.free_ports(2)]
  processes = []
  for index in range(2):
    env = dict(os.environ)
    env["TF_CONFIG"] = json.dumps({
        "cluster": {"worker": workers},
        "task": {"type": "worker", "index": index},
    })
    env["CUDA_VISIBLE_DEVICES"] = ""
    processes.append(subprocess.Popen(
        [sys.executable, WORKER, out_dir] + SETTINGS, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  logs = []
  try:
    for process in processes:
      logs.append(process.communicate(timeout=TIMEOUT_S)[0])
  finally:
    for process in processes:
      if process.poll() is None:
        process.kill()
        process.wait()
  for index, process in enumerate(processes):
    assert process.returncode == 0, (
        f"worker {index} exited with {process.returncode}:\n"
        f"{logs[index][-4000:] if index < len(logs) else ''}")
  return out_dir


def _expected(setting):
  return dm.state(*dm.train_one_device(lambda: dm.make_optimizer(setting)))


@pytest.mark.parametrize("setting", SETTINGS)
def test_two_workers_equal_one_device(cluster_output, setting):
  expected = _expected(setting)
  for index in range(2):
    with np.load(os.path.join(cluster_output, f"state_{index}.npz")) as saved:
      for key, value in expected.items():
        np.testing.assert_allclose(saved[f"{setting}/{key}"], value,
                                   rtol=1e-5, atol=1e-10,
                                   err_msg=f"worker {index}: {key}")


@pytest.mark.parametrize("setting", ["combined", dm.KERAS_PREFIX + "combined"])
def test_chief_checkpoint_restores_on_one_device(cluster_output, setting):
  actual = dm.restore_on_one_device(
      os.path.join(cluster_output, dm.checkpoint_name(setting)), setting)
  expected = _expected(setting)
  for key, value in expected.items():
    np.testing.assert_allclose(actual[key], value, rtol=1e-5, atol=1e-10,
                               err_msg=key)
