"""Training survives the loss of a worker with the numbers of an unbroken run.

A MultiWorkerMirroredStrategy job of two worker processes on 127.0.0.1
(`preemption_worker.py`) is stopped mid-training, the way a cluster preempts
it, and started again with the same command, as a scheduler restarts it:

* SIGTERM to one worker in a custom loop under `PreemptionCheckpointHandler`:
  both workers save at the same step and exit with the restart code; the
  restarted job continues from there.
* SIGKILL of one worker (no warning, no save), then of the other: the
  restarted job continues from the newest periodic checkpoint.
* SIGTERM to one worker of `model.fit` with `BackupAndRestore`: the restarted
  job continues from the last epoch's backup.

Each ends with the weights, slots and `iterations` of a run that was never
interrupted: the loop's equal one device trained on the same batches, the
`fit` job's equal the same job run through. A ParameterServerStrategy
coordinator that loses a worker mid-training finishes on the other
(`parameter_server_preemption.py`).
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import distributed_model as dm
from tests import parameter_server_preemption as ps
from tests import preemption_worker as worker

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "preemption_worker.py")
PS_SCRIPT = os.path.join(HERE, "parameter_server_preemption.py")
TIMEOUT_S = 240
# Step 5: after the periodic save of step 4, before the one of step 6.
PAUSE_AT = 5


class Job:
  """The processes of one run of a job, logging to files.

  `loop` is two MultiWorkerMirroredStrategy workers; `fit` one process.
  """

  def __init__(self, out_dir, mode):
    self.out_dir = out_dir
    workers = 2 if mode == "loop" else 1
    ports = dm.free_ports(workers)
    self.logs = [os.path.join(out_dir, f"log_{i}_{time.monotonic_ns()}.txt")
                 for i in range(workers)]
    self.processes = []
    for index in range(workers):
      env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
      if workers > 1:
        env["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        })
      with open(self.logs[index], "w") as log:
        self.processes.append(subprocess.Popen(
            [sys.executable, WORKER, out_dir, mode], env=env, stdout=log,
            stderr=subprocess.STDOUT))

  def log(self, index):
    with open(self.logs[index]) as f:
      return f.read()[-4000:]

  def wait_for_files(self, names):
    """Waits until every worker has written its file; fails if one exits."""
    deadline = time.monotonic() + TIMEOUT_S
    paths = [os.path.join(self.out_dir, n) for n in names]
    while not all(os.path.exists(p) for p in paths):
      for index, process in enumerate(self.processes):
        assert process.poll() is None, (
            f"worker {index} exited with {process.returncode} before "
            f"writing {names[index]}:\n{self.log(index)}")
      assert time.monotonic() < deadline, f"no {names} in {TIMEOUT_S} s"
      time.sleep(0.1)

  def wait(self, timeout=TIMEOUT_S):
    """Waits for both workers; returns their exit codes."""
    deadline = time.monotonic() + timeout
    try:
      for index, process in enumerate(self.processes):
        try:
          process.wait(timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
          pytest.fail(f"worker {index} still running after {timeout} s:\n"
                      f"{self.log(index)}")
    finally:
      self.kill()
    return [p.returncode for p in self.processes]

  def kill(self):
    for process in self.processes:
      if process.poll() is None:
        process.kill()
        process.wait()


def _pause(out_dir, step):
  with open(os.path.join(out_dir, "pause_at"), "w") as f:
    f.write(str(step))


def _resume(out_dir):
  os.remove(os.path.join(out_dir, "pause_at"))


def _start_paused(out_dir, mode, step):
  """Starts a job that stops after `step`; returns it once it has stopped."""
  _pause(out_dir, step)
  job = Job(out_dir, mode)
  try:
    job.wait_for_files([f"paused_{i}" for i in range(len(job.processes))])
  except BaseException:
    job.kill()
    raise
  return job


def _run_to_the_end(out_dir, mode):
  job = Job(out_dir, mode)
  codes = job.wait()
  assert set(codes) == {0}, [job.log(i) for i in range(len(codes))] + [codes]


def _starts(out_dir, index):
  with open(os.path.join(out_dir, f"start_{index}")) as f:
    return [int(line) for line in f.read().split()]


def _assert_states(out_dir, expected, rtol=1e-5, workers=2):
  for index in range(workers):
    with np.load(os.path.join(out_dir, f"state_{index}.npz")) as saved:
      assert sorted(saved.files) == sorted(expected)
      for key, value in expected.items():
        np.testing.assert_allclose(saved[key], value, rtol=rtol, atol=1e-10,
                                   err_msg=f"worker {index}: {key}")


def _loop_reference():
  """Both faces trained on one device for the whole run, never stopped."""
  out = {}
  for name, setting in worker.LOOP_FACES.items():
    variables = dm.make_variables(dm.variable_kind(setting))
    optimizer = dm.make_optimizer(setting)
    for step in range(worker.LOOP_STEPS):
      dm.step(optimizer, variables, *dm.data(seed=step))
    for key, value in dm.state(variables, optimizer).items():
      out[f"{name}/{key}"] = value
  return out


def test_sigterm_to_one_worker_saves_both_and_the_restart_continues(tmp_path):
  out_dir = str(tmp_path)
  job = _start_paused(out_dir, "loop", PAUSE_AT)
  try:
    job.processes[1].send_signal(signal.SIGTERM)
    _resume(out_dir)
    codes = job.wait()
  finally:
    job.kill()
  # The handler saved on both workers and exited with the restart code.
  assert codes == [worker.RESTART_CODE] * 2, [job.log(0), job.log(1)]

  _run_to_the_end(out_dir, "loop")
  for index in range(2):
    first, restart = _starts(out_dir, index)
    assert first == 0
    # From the handler's save after the signal, not the periodic one before.
    assert PAUSE_AT <= restart < worker.LOOP_STEPS, restart
  _assert_states(out_dir, _loop_reference())


def test_sigkill_of_one_worker_continues_from_the_newest_checkpoint(tmp_path):
  out_dir = str(tmp_path)
  job = _start_paused(out_dir, "loop", PAUSE_AT)
  try:
    job.processes[1].kill()
    job.processes[1].wait()
    _resume(out_dir)
    # The other worker cannot go on alone; the scheduler restarts the job.
    time.sleep(1.0)
  finally:
    job.kill()

  _run_to_the_end(out_dir, "loop")
  newest = PAUSE_AT - PAUSE_AT % worker.SAVE_EVERY
  for index in range(2):
    assert _starts(out_dir, index) == [0, newest]
  _assert_states(out_dir, _loop_reference())


def test_fit_with_backup_and_restore_resumes_after_sigterm(tmp_path):
  reference_dir = tmp_path / "uninterrupted"
  out_dir = tmp_path / "preempted"
  reference_dir.mkdir()
  out_dir.mkdir()
  _run_to_the_end(str(reference_dir), "fit")
  with np.load(reference_dir / "state_0.npz") as saved:
    expected = dict(saved)

  steps_per_epoch = worker.FIT_EXAMPLES // worker.FIT_GLOBAL_BATCH
  # Mid-way through the third epoch.
  job = _start_paused(str(out_dir), "fit", 2 * steps_per_epoch + 1)
  try:
    job.processes[0].send_signal(signal.SIGTERM)
    assert job.processes[0].wait(timeout=TIMEOUT_S) == -signal.SIGTERM
  finally:
    job.kill()
  _resume(str(out_dir))

  _run_to_the_end(str(out_dir), "fit")
  # From the backup of the second epoch's end.
  assert _starts(str(out_dir), 0) == [0, 2 * steps_per_epoch]
  # `iterations` counts updates: one per `gradient_accumulation_steps` batches.
  assert int(expected["iterations"]) == (
      worker.FIT_EPOCHS * steps_per_epoch //
      worker.FIT_CONFIG["gradient_accumulation_steps"])
  _assert_states(str(out_dir), expected, rtol=1e-6, workers=1)


def test_parameter_server_coordinator_finishes_without_a_killed_worker(
    tmp_path):
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
  env.pop("TF_CONFIG", None)
  process = subprocess.run(
      [sys.executable, PS_SCRIPT, str(tmp_path)], env=env, text=True,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT_S,
      check=False)
  assert process.returncode == 0, process.stdout[-4000:]
  with open(tmp_path / "killed") as f:
    assert int(f.read()) == -signal.SIGKILL
  # The coordinator sent a step to the dead worker and ran it on the other.
  assert "task:1 failed with UnavailableError" in process.stdout
  with np.load(tmp_path / "result.npz") as result:
    result = dict(result)
  closures = 2 * ps.STEPS
  assert result["losses"].shape == (closures, len(ps.FACES))
  assert np.all(np.isfinite(result["losses"]))
  for name in ps.FACES:
    # Every closure completed once: no step lost, none applied twice.
    assert int(result[f"{name}/iterations"]) == closures
    for key, value in result.items():
      if key.startswith(f"{name}/") and key != f"{name}/iterations":
        assert np.all(np.isfinite(value)), key
    initial = list(dm.initial_values().values())
    for i, start in enumerate(initial):
      assert not np.allclose(result[f"{name}/var/{i}"], start), (name, i)
