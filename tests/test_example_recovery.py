"""The main example survives kills and damaged checkpoint files.

`savedmodel_examples/train_export_resume.py` runs in subprocesses on 200
examples (7 steps per epoch), without the fresh-process resume: once
uninterrupted (the reference, started in the background when the module
starts), once killed with SIGKILL and rerun, once rerun after its newest
data file was truncated, and with every checkpoint damaged. Each recovered
run must end with the reference's weights, optimizer state and per-step and
per-epoch metrics, and say where it resumed. In-process tests cover the other
kinds of damage (`.index` files, the `checkpoint` index file), that a
checkpoint failing halfway leaves nothing behind, and the metrics file.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from savedmodel_examples import data
from savedmodel_examples import recovery
from savedmodel_examples import trainer as trainer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "savedmodel_examples", "train_export_resume.py")

TRAIN_EXAMPLES = 200
STEPS_PER_EPOCH = 7  # ceil(200 / 32)
EPOCHS = 30
FINAL_STEP = EPOCHS * STEPS_PER_EPOCH
FLAG = "restart_on_damaged_checkpoints"
RTOL = 1e-6
TIMEOUT = 300


def _flags(output_dir, data_dir, *extra):
  return [f"--output_dir={output_dir}", f"--data_dir={data_dir}",
          f"--train_examples={TRAIN_EXAMPLES}", "--test_examples=100",
          "--batch_size=32", "--hidden_units=16", f"--epochs={EPOCHS}",
          "--verbose=0", "--resume_in_fresh_process=false", *extra]


def _env():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def _start(args, log_path):
  log = open(log_path, "w")  # pylint: disable=consider-using-with
  proc = subprocess.Popen([sys.executable, SCRIPT, *args], env=_env(),
                          stdout=log, stderr=subprocess.STDOUT)
  log.close()
  return proc


def _finish(proc, log_path):
  try:
    returncode = proc.wait(timeout=TIMEOUT)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise
  with open(log_path) as f:
    return returncode, f.read()


def _run(args, log_path):
  return _finish(_start(args, log_path), log_path)


def _metrics(output_dir):
  with open(os.path.join(output_dir, "train_metrics.json")) as f:
    return json.load(f)


def _final_state(metrics):
  """Every saved value of the trainer in the run's final checkpoint."""
  reader = tf.train.load_checkpoint(metrics["checkpoint"])
  return {key: reader.get_tensor(key)
          for key in reader.get_variable_to_shape_map()
          if key.startswith("trainer/")}


def _checkpoint_dir(output_dir):
  return os.path.join(output_dir, "checkpoints")


def _steps_on_disk(output_dir):
  return sorted(int(p.rsplit("-", 1)[1][:-len(".index")]) for p in glob.glob(
      os.path.join(_checkpoint_dir(output_dir), "ckpt-*.index")))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  # Prepared once, before any run, so concurrent runs only read it.
  data.load("uci_digits", path, "train", TRAIN_EXAMPLES)
  return path


class _Reference:
  """The uninterrupted run, started in the background."""

  def __init__(self, output_dir, data_dir):
    self.output_dir = output_dir
    self._log = os.path.join(os.path.dirname(output_dir), "reference.log")
    self._proc = _start(_flags(output_dir, data_dir), self._log)
    self._result = None

  def result(self):
    if self._result is None:
      returncode, log = _finish(self._proc, self._log)
      assert returncode == 0, log[-6000:]
      metrics = _metrics(self.output_dir)
      self._result = (metrics, _final_state(metrics))
    return self._result


@pytest.fixture(scope="module", autouse=True)
def reference(tmp_path_factory, data_dir):
  ref = _Reference(str(tmp_path_factory.mktemp("reference") / "out"),
                   data_dir)
  yield ref
  if ref._proc.poll() is None:  # pylint: disable=protected-access
    ref._proc.kill()  # pylint: disable=protected-access


def _assert_same_run(output_dir, reference):
  """The run in `output_dir` ended exactly where the reference did."""
  expected_metrics, expected_state = reference.result()
  metrics = _metrics(output_dir)
  # One record per epoch across the runs, none twice.
  assert [e["epoch"] for e in metrics["epochs"]] == list(range(1, EPOCHS + 1))
  assert [e["iterations"] for e in metrics["epochs"]] == list(
      range(STEPS_PER_EPOCH, FINAL_STEP + 1, STEPS_PER_EPOCH))
  assert len(metrics["losses"]) == FINAL_STEP
  np.testing.assert_allclose(metrics["losses"], expected_metrics["losses"],
                             rtol=RTOL, atol=0)
  for key in ("train_loss", "test_loss", "test_accuracy"):
    np.testing.assert_allclose([e[key] for e in metrics["epochs"]],
                               [e[key] for e in expected_metrics["epochs"]],
                               rtol=RTOL, atol=0, err_msg=key)
  assert metrics["exported_iterations"] == FINAL_STEP
  assert metrics["test_loss"] == pytest.approx(expected_metrics["test_loss"],
                                               rel=RTOL)
  state = _final_state(metrics)
  assert sorted(state) == sorted(expected_state)
  # The model, `iterations` and both Adadelta accumulators of every variable.
  assert sum(".OPTIMIZER_SLOT/" in key for key in state) == 8
  for key, value in state.items():
    np.testing.assert_allclose(value, expected_state[key], rtol=RTOL,
                               atol=1e-7, err_msg=key)
  return metrics


def _copy_reference(reference, tmp_path):
  reference.result()
  output_dir = str(tmp_path / "out")
  shutil.copytree(reference.output_dir, output_dir)
  assert _steps_on_disk(output_dir) == [FINAL_STEP - 14, FINAL_STEP - 7,
                                        FINAL_STEP]
  return output_dir


def _truncate(path):
  size = os.path.getsize(path)
  assert size > 100
  with open(path, "r+b") as f:
    f.truncate(size // 2)


def _flip_byte(path):
  with open(path, "r+b") as f:
    contents = bytearray(f.read())
    contents[len(contents) // 2] ^= 0xFF
    f.seek(0)
    f.write(contents)


# In-process tests of `recovery`, on a small trainer's checkpoints.


def _small_trainer(seed=0):
  return trainer_lib.Trainer(input_dim=4, num_classes=3, hidden_units=[5],
                             seed=seed)


def _make_checkpoint():
  return tf.train.Checkpoint(trainer=_small_trainer())


def _values(trainer):
  return [v.numpy() for v in trainer.variables]


def _write_checkpoints(directory, steps=(2, 4, 6)):
  """Saves distinct values of every variable per step; returns them."""
  checkpoint = _make_checkpoint()
  trainer = checkpoint.trainer
  manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=3)
  saved = {}
  for step in steps:
    for i, v in enumerate(trainer.variables):
      if v.dtype.is_floating:
        v.assign(tf.random.stateless_normal(v.shape, [step, i], dtype=v.dtype))
      else:
        v.assign(tf.cast(tf.fill(v.shape, step), v.dtype))
    manager.save(checkpoint_number=step)
    saved[step] = _values(trainer)
  return saved


def _assert_values(trainer, expected):
  actual = _values(trainer)
  assert len(actual) == len(expected)
  for mine, theirs in zip(actual, expected):
    np.testing.assert_array_equal(mine, theirs)


def _restore(directory, start_over=False):
  return recovery.restore_newest(directory, _make_checkpoint,
                                 start_over=start_over, start_over_flag=FLAG)


def _damage(directory, kind):
  prefix = os.path.join(directory, "ckpt-6")
  if kind == "truncated data":
    _truncate(prefix + ".data-00000-of-00001")
    return [prefix + ".data-00000-of-00001"]
  if kind == "corrupted data":
    _flip_byte(prefix + ".data-00000-of-00001")
    return [prefix + ".data-00000-of-00001"]
  if kind == "missing data":
    os.remove(prefix + ".data-00000-of-00001")
    return [prefix + ".data-00000-of-00001"]
  if kind == "corrupted index":
    _flip_byte(prefix + ".index")
    return [prefix + ".index"]
  assert kind == "truncated index"
  _truncate(prefix + ".index")
  return [prefix + ".index"]


@pytest.mark.parametrize("kind", ["truncated data", "corrupted data",
                                  "missing data", "corrupted index",
                                  "truncated index"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, kind):
  directory = str(tmp_path)
  saved = _write_checkpoints(directory)
  blamed = _damage(directory, kind)
  damaged_sizes = {os.path.basename(p): os.path.getsize(p)
                   for p in glob.glob(os.path.join(directory, "ckpt-6*"))}

  result = _restore(directory)

  assert result.restored == os.path.join(directory, "ckpt-4")
  _assert_values(result.checkpoint.trainer, saved[4])
  assert int(result.checkpoint.trainer.optimizer.iterations) == 4
  [unusable] = result.unusable
  assert unusable.prefix == os.path.join(directory, "ckpt-6")
  assert unusable.files == blamed and unusable.damaged
  # Moved aside, not deleted, byte for byte.
  assert result.moved_to and result.moved_to.startswith(directory)
  assert {name: os.path.getsize(os.path.join(result.moved_to, name))
          for name in os.listdir(result.moved_to)} == damaged_sizes
  assert not glob.glob(os.path.join(directory, "ckpt-6*"))
  # A manager made afterwards continues from ckpt-4 and keeps three.
  manager = tf.train.CheckpointManager(result.checkpoint, directory,
                                       max_to_keep=3)
  assert manager.latest_checkpoint == os.path.join(directory, "ckpt-4")
  assert manager.checkpoints == [os.path.join(directory, f"ckpt-{s}")
                                 for s in (2, 4)]
  manager.save(checkpoint_number=6)
  manager.save(checkpoint_number=8)
  assert [int(p.rsplit("-", 1)[1]) for p in manager.checkpoints] == [4, 6, 8]
  assert not os.path.exists(os.path.join(directory, "ckpt-2.index"))


@pytest.mark.parametrize("kind", ["garbage", "binary", "empty", "missing"])
def test_damaged_or_missing_checkpoint_index_file(tmp_path, kind):
  directory = str(tmp_path)
  saved = _write_checkpoints(directory)
  state = os.path.join(directory, "checkpoint")
  if kind == "missing":
    os.remove(state)
  else:
    with open(state, "wb") as f:
      f.write({"garbage": b"garbage {{ model_checkpoint_path",
               "binary": b"\x00\x93\xff\x10", "empty": b""}[kind])
  # What TensorFlow alone does: forgets every checkpoint, or raises.
  try:
    assert tf.train.CheckpointManager(
        _make_checkpoint(), directory, max_to_keep=3).latest_checkpoint is None
  except ValueError:  # UnicodeDecodeError, "Invalid checkpoint state".
    pass

  result = _restore(directory)

  assert result.restored == os.path.join(directory, "ckpt-6")
  assert not result.unusable
  assert ("missing" if kind == "missing" else "damaged") in (
      result.state_problem)
  _assert_values(result.checkpoint.trainer, saved[6])
  if kind == "missing":
    assert result.moved_to is None
  else:
    assert os.listdir(result.moved_to) == ["checkpoint"]
  manager = tf.train.CheckpointManager(result.checkpoint, directory,
                                       max_to_keep=3)
  assert [int(p.rsplit("-", 1)[1]) for p in manager.checkpoints] == [2, 4, 6]
  manager.save(checkpoint_number=8)  # Deletes ckpt-2: the manager knows it.
  assert not os.path.exists(os.path.join(directory, "ckpt-2.index"))


def test_intact_checkpoints_are_left_alone(tmp_path):
  directory = str(tmp_path)
  saved = _write_checkpoints(directory)
  before = {p: os.path.getmtime(p) for p in glob.glob(f"{directory}/*")}
  result = _restore(directory)
  assert result.restored == os.path.join(directory, "ckpt-6")
  _assert_values(result.checkpoint.trainer, saved[6])
  assert (result.unusable, result.state_problem, result.moved_to) == (
      [], None, None)
  assert {p: os.path.getmtime(p) for p in glob.glob(f"{directory}/*")
         } == before
  empty = _restore(str(tmp_path / "new"))
  assert empty.restored is None and not empty.started_over
  _assert_values(empty.checkpoint.trainer, _values(_small_trainer()))


def _write_half_checkpoint(directory, step):
  """A checkpoint of the model alone: restoring it assigns the model's
  variables, then `assert_consumed` fails on the optimizer's."""
  other = _small_trainer(seed=7)
  for v in other.model.variables:
    v.assign(tf.fill(v.shape, 5.0))
  holder = tf.Module()
  holder.model = other.model
  tf.train.Checkpoint(trainer=holder).write(
      os.path.join(directory, f"ckpt-{step}"))
  return _values(other)


def test_a_checkpoint_failing_halfway_leaves_nothing_behind(tmp_path):
  # The premise: restoring it into one trainer does overwrite its model.
  directory = str(tmp_path / "half")
  _write_half_checkpoint(directory, 9)
  probe = _make_checkpoint()
  with pytest.raises(AssertionError):
    probe.restore(os.path.join(directory, "ckpt-9")).assert_consumed()
  assert np.all(probe.trainer.model.layers[0].kernel.numpy() == 5.0)

  # Without permission to start over: a clear error, nothing touched.
  files = sorted(os.listdir(directory))
  with pytest.raises(recovery.NoUsableCheckpointError) as error:
    _restore(directory)
  assert "ckpt-9.index" in str(error.value) and f"--{FLAG}" in str(
      error.value)
  assert sorted(os.listdir(directory)) == files

  # Starting over trains from the initial weights, not the half-restored.
  result = _restore(directory, start_over=True)
  assert result.started_over and result.restored is None
  _assert_values(result.checkpoint.trainer, _values(_small_trainer()))
  assert int(result.checkpoint.trainer.optimizer.iterations) == 0
  assert not glob.glob(os.path.join(directory, "ckpt-*"))
  assert sorted(os.listdir(result.moved_to)) == files

  # Falling back past it: exactly the older checkpoint's values.
  directory = str(tmp_path / "fallback")
  saved = _write_checkpoints(directory, steps=(2, 4))
  _write_half_checkpoint(directory, 9)
  result = _restore(directory)
  assert result.restored == os.path.join(directory, "ckpt-4")
  assert [(u.prefix, u.damaged) for u in result.unusable] == [
      (os.path.join(directory, "ckpt-9"), False)]
  _assert_values(result.checkpoint.trainer, saved[4])


def test_metrics_history_merges_runs_and_is_written_atomically(tmp_path):
  first = {"losses": [float(s) for s in range(28)],
           "epochs": [{"epoch": e, "iterations": 7 * e, "train_loss": e}
                      for e in range(1, 5)]}
  # Resumed from step 21 (epoch 3): epoch 4 is redone, its record replaced.
  second = {"losses": [100.0 + s for s in range(21, 35)],
            "epochs": [{"epoch": e, "iterations": 7 * e, "train_loss": -e}
                       for e in (4, 5)]}
  merged = recovery.merge_history(first, 21, second)
  assert merged["losses"] == list(range(21)) + [100.0 + s
                                                for s in range(21, 35)]
  assert [(e["epoch"], e["train_loss"]) for e in merged["epochs"]] == [
      (1, 1), (2, 2), (3, 3), (4, -4), (5, -5)]
  assert recovery.merge_history(None, 0, second)["epochs"] == second["epochs"]

  path = str(tmp_path / "metrics.json")
  recovery.write_json(path, merged)
  with pytest.raises(TypeError):  # Fails halfway through the dump.
    recovery.write_json(path, {"losses": [1.0] * 1000, "z": object()})
  assert recovery.read_json(path) == merged
  assert os.listdir(tmp_path) == ["metrics.json"]
  with open(path, "w") as f:
    f.write('{"losses": [1, 2')  # Left by an older, non-atomic writer.
  assert recovery.read_json(path) is None
  assert not os.path.exists(path)
  assert len(glob.glob(path + ".unreadable-*")) == 1


# The example itself, in subprocesses.


def test_sigkill_then_rerun_ends_like_the_uninterrupted_run(
    tmp_path, data_dir, reference):
  output_dir = str(tmp_path / "out")
  args = _flags(output_dir, data_dir)
  log_path = str(tmp_path / "killed.log")
  proc = _start(args, log_path)
  deadline = time.monotonic() + TIMEOUT
  while len(_steps_on_disk(output_dir)) < 2:
    assert proc.poll() is None, open(log_path).read()[-6000:]
    assert time.monotonic() < deadline, "no two checkpoints in time"
    time.sleep(0.02)
  os.kill(proc.pid, signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL
  killed_at = _steps_on_disk(output_dir)
  assert killed_at[-1] < FINAL_STEP, "the run finished before the kill"
  # Written atomically after each epoch: readable, and no further than the
  # kill (it may hold one epoch past the newest checkpoint).
  interrupted = _metrics(output_dir)
  done = [e["epoch"] for e in interrupted["epochs"]]
  assert done == list(range(1, len(done) + 1))
  assert 2 <= len(done) < EPOCHS

  returncode, log = _run(args, str(tmp_path / "rerun.log"))
  assert returncode == 0, log[-6000:]
  metrics = _assert_same_run(output_dir, reference)
  first, second = metrics["runs"]
  assert first["start_iterations"] == 0
  start = second["start_iterations"]
  assert 2 * STEPS_PER_EPOCH <= start < FINAL_STEP
  assert start % STEPS_PER_EPOCH == 0
  assert second["restored"] == os.path.join(_checkpoint_dir(output_dir),
                                            f"ckpt-{start}")
  assert f"Restored {second['restored']} (optimizer step {start})" in log
  # The epochs before the resume are the killed run's records.
  assert metrics["epochs"][:start // STEPS_PER_EPOCH] == (
      interrupted["epochs"][:start // STEPS_PER_EPOCH])


def test_truncated_newest_data_file_resumes_from_the_previous_checkpoint(
    tmp_path, data_dir, reference):
  output_dir = _copy_reference(reference, tmp_path)
  previous = FINAL_STEP - STEPS_PER_EPOCH
  damaged = os.path.join(_checkpoint_dir(output_dir),
                         f"ckpt-{FINAL_STEP}.data-00000-of-00001")
  _truncate(damaged)
  size = os.path.getsize(damaged)
  # What TensorFlow alone does with it.
  with pytest.raises(IndexError, match="Read less bytes than requested"):
    tf.train.Checkpoint(trainer=trainer_lib.Trainer(
        input_dim=64, num_classes=10, hidden_units=[16])).restore(
            damaged.split(".data-")[0])

  returncode, log = _run(_flags(output_dir, data_dir),
                         str(tmp_path / "rerun.log"))

  assert returncode == 0, log[-6000:]
  assert damaged in log and "Read less bytes than requested" in log
  restored = os.path.join(_checkpoint_dir(output_dir), f"ckpt-{previous}")
  assert f"Restored {restored} (optimizer step {previous})" in log
  metrics = _assert_same_run(output_dir, reference)
  run = metrics["runs"][-1]
  assert run["start_iterations"] == previous and run["restored"] == restored
  assert [u["files"] for u in run["unusable"]] == [[damaged]]
  # The damaged file was moved aside, as it was, and the log says where.
  moved = os.path.join(run["moved_to"], os.path.basename(damaged))
  assert os.path.getsize(moved) == size and run["moved_to"] in log
  assert _steps_on_disk(output_dir) == [FINAL_STEP - 14, previous, FINAL_STEP]


def test_with_every_checkpoint_damaged_it_restarts_only_when_told(
    tmp_path, data_dir, reference):
  output_dir = _copy_reference(reference, tmp_path)
  directory = _checkpoint_dir(output_dir)
  damaged = [os.path.join(directory, f"ckpt-{FINAL_STEP - 14}.index"),
             os.path.join(directory,
                          f"ckpt-{FINAL_STEP - 7}.data-00000-of-00001"),
             os.path.join(directory, f"ckpt-{FINAL_STEP}.data-00000-of-00001")]
  _flip_byte(damaged[0])
  _truncate(damaged[1])
  _flip_byte(damaged[2])
  before = {p: os.path.getsize(p) for p in glob.glob(f"{directory}/*")}

  returncode, log = _run(_flags(output_dir, data_dir),
                         str(tmp_path / "refused.log"))
  assert returncode != 0
  assert f"--{FLAG}" in log and "No checkpoint in" in log
  for path in damaged:
    assert path in log
  assert "Traceback" not in log
  # Nothing moved or changed, nothing trained.
  assert {p: os.path.getsize(p) for p in glob.glob(f"{directory}/*")
         } == before
  assert _metrics(output_dir)["runs"] == _metrics(
      reference.output_dir)["runs"]

  returncode, log = _run(_flags(output_dir, data_dir, f"--{FLAG}"),
                         str(tmp_path / "restarted.log"))
  assert returncode == 0, log[-6000:]
  assert "starting over from step 0" in log
  metrics = _assert_same_run(output_dir, reference)
  run = metrics["runs"][-1]
  assert run["started_over"] and run["start_iterations"] == 0
  assert sorted(u["prefix"].rsplit("-", 1)[1] for u in run["unusable"]) == (
      sorted(str(s) for s in (FINAL_STEP - 14, FINAL_STEP - 7, FINAL_STEP)))
  assert {os.path.basename(p): s for p, s in before.items()} == {
      name: os.path.getsize(os.path.join(run["moved_to"], name))
      for name in os.listdir(run["moved_to"])}
