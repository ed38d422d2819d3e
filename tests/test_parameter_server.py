"""ParameterServerStrategy with a ClusterCoordinator equals one device.

Each cluster (workers and two parameter servers as `tf.distribute.Server`s on
127.0.0.1, with this test's coordinator) runs in its own process,
`parameter_server_cluster.py`, because TensorFlow connects a process to a
single cluster. The three clusters start together.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests import distributed_model as dm

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      "parameter_server_cluster.py")
TIMEOUT_S = 240
# Every setting: `clipnorm` too, which clips a sharded variable by the norm of
# all its shards (the bias, split in two, has norm 5.4 > 2.5, and its halves'
# norms differ, so clipping shard by shard would give other numbers).
SHARDED_SETTINGS = sorted(dm.OPTIMIZER_SETTINGS)
# Keras variables, which wrap a `ShardedVariable` under the partitioner.
KERAS_SETTINGS = [dm.KERAS_PREFIX + "combined", dm.KERAS_PREFIX + "lazy",
                  dm.KERAS_FACE_PREFIX + "combined"]
# (workers, shards, steps, settings) per cluster.
CLUSTERS = {
    "one_worker": (1, 1, dm.STEPS,
                   sorted(dm.OPTIMIZER_SETTINGS) + KERAS_SETTINGS),
    "sharded": (1, 2, dm.STEPS, SHARDED_SETTINGS + KERAS_SETTINGS),
    "two_workers": (2, 2, 12, ["plain"]),
}


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
  """Runs every cluster once; returns {cluster: (folder, result arrays)}."""
  processes = {}
  for name, (workers, shards, steps, settings) in CLUSTERS.items():
    folder = str(tmp_path_factory.mktemp(name))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env.pop("TF_CONFIG", None)
    processes[name] = (folder, subprocess.Popen(
        [sys.executable, SCRIPT, folder, str(workers), str(shards),
         str(steps)] + settings,
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  results = {}
  try:
    for name, (folder, process) in processes.items():
      log = process.communicate(timeout=TIMEOUT_S)[0]
      assert process.returncode == 0, (
          f"cluster {name} exited with {process.returncode}:\n{log[-4000:]}")
      with np.load(os.path.join(folder, "result.npz")) as arrays:
        results[name] = (folder, dict(arrays))
  finally:
    for _, process in processes.values():
      if process.poll() is None:
        process.kill()
        process.wait()
  return results


def _expected(setting):
  return dm.state(*dm.train_one_device(lambda: dm.make_optimizer(setting)))


def _assert_equals_one_device(arrays, setting):
  for key, value in _expected(setting).items():
    np.testing.assert_allclose(arrays[f"{setting}/{key}"], value, rtol=1e-5,
                               atol=1e-10, err_msg=key)


@pytest.mark.parametrize("setting",
                         sorted(dm.OPTIMIZER_SETTINGS) + KERAS_SETTINGS)
def test_one_worker_equals_one_device(clusters, setting):
  _assert_equals_one_device(clusters["one_worker"][1], setting)


@pytest.mark.parametrize("setting", SHARDED_SETTINGS + KERAS_SETTINGS)
def test_sharded_variables_equal_one_device(clusters, setting):
  _assert_equals_one_device(clusters["sharded"][1], setting)


@pytest.mark.parametrize("cluster", ["one_worker", "sharded"])
def test_slots_are_placed_beside_their_variable(clusters, cluster):
  arrays = clusters[cluster][1]
  for setting in CLUSTERS[cluster][3]:
    devices = arrays[f"{setting}/devices"]
    # kernel, table and bias, each in one piece or two shards.
    assert len(devices) == 3 * CLUSTERS[cluster][1]
    for row in devices:
      assert "/job:ps/" in row[0], row
      assert set(row) == {row[0]}, row
    if CLUSTERS[cluster][1] == 2:
      # Shard i of every variable on parameter server i.
      assert [row[0].split("/")[3] for row in devices] == ["task:0", "task:1"] * 3


def test_two_workers_train_and_the_loss_falls(clusters):
  arrays = clusters["two_workers"][1]
  losses = arrays["plain/losses"]
  assert losses.shape == (12,)
  assert np.all(np.isfinite(losses))
  assert losses[-1] < losses[0]
  # Every scheduled step was applied once.
  assert int(arrays["plain/iterations"]) == 12


@pytest.mark.parametrize("cluster", ["one_worker", "sharded"])
@pytest.mark.parametrize("setting", ["combined", dm.KERAS_PREFIX + "combined"])
def test_checkpoint_restores_on_one_device(clusters, cluster, setting):
  """Written by the coordinator (variables on parameter servers).

  A sharded variable's slots are saved as slices of whole slots, so they
  restore onto one plain variable; the restore comes before the slots exist.
  """
  folder = clusters[cluster][0]
  actual = dm.restore_on_one_device(
      os.path.join(folder, dm.checkpoint_name(setting)), setting)
  for key, value in _expected(setting).items():
    np.testing.assert_allclose(actual[key], value, rtol=1e-5, atol=1e-10,
                               err_msg=key)


RESTORE_CASES = ["same_sharding", "other_sharding", "from_one_device"]


@pytest.mark.parametrize("case", RESTORE_CASES)
@pytest.mark.parametrize("setting", SHARDED_SETTINGS)
def test_checkpoint_restores_under_the_strategy(clusters, setting, case):
  """Restored in the cluster (`restore_checks`) into new variables there.

  The sharded checkpoint into the same sharding (before the slots exist) and
  into another one (kernel in three shards, bias whole; slots built first),
  and a one-device checkpoint into sharded variables.
  """
  arrays = clusters["sharded"][1]
  for key, value in _expected(setting).items():
    np.testing.assert_allclose(arrays[f"{setting}/restored/{case}/{key}"],
                               value, rtol=1e-5, atol=1e-10, err_msg=key)
  # Every restored slot is beside its variable or shard, on a server.
  for row in arrays[f"{setting}/restored/{case}/devices"]:
    assert "/job:ps/" in row[0], row
    assert set(row) == {row[0]}, row
