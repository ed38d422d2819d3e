"""A ParameterServerStrategy job that loses a worker mid-training, for tests.

This process is the coordinator and hosts two parameter servers and worker 0
as in-process `tf.distribute.Server`s; worker 1 is a server in a process of
its own (`--serve`), so that it can be killed. Both faces train (the module
face on `tf.Variable`s, the Keras face on Keras variables), one step of each
per scheduled closure. The coordinator schedules `STEPS` closures and joins,
the test's signal file is written and worker 1 is killed with SIGKILL, then
`STEPS` more are scheduled and joined: the closures that found worker 1 gone
run on worker 0. Writes to `<out>/result.npz` every number the optimizers
own and every step's loss.

Worker 1 is killed between steps: a closure running on a worker that dies is
run again on another (the coordinator's at-least-once semantics), so a kill
inside a step may apply that step twice.

Usage: parameter_server_preemption.py OUT_DIR
       parameter_server_preemption.py --serve CLUSTER_JSON
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from tests import distributed_model as dm  # pylint: disable=g-import-not-at-top

STEPS = 6
# No gradient accumulation: `iterations` then counts every step.
FACES = {"module": "lazy", "keras_face": "keras_face:clipnorm"}


def serve(spec):
  tf.distribute.Server(tf.train.ClusterSpec(spec), job_name="worker",
                       task_index=1, protocol="grpc", start=True).join()


def _wait_until_listening(port, process, timeout=120):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert process.poll() is None, f"worker 1 exited with {process.returncode}"
    with socket.socket() as s:
      if s.connect_ex(("127.0.0.1", port)) == 0:
        return
    time.sleep(0.2)
  raise TimeoutError(f"worker 1 not listening on {port} after {timeout} s")


def main(out_dir):
  ports = dm.free_ports(4)
  spec = {"worker": [f"127.0.0.1:{p}" for p in ports[:2]],
          "ps": [f"127.0.0.1:{p}" for p in ports[2:]]}
  remote = subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--serve", json.dumps(spec)])
  try:
    _wait_until_listening(ports[1], remote)
    cluster = tf.train.ClusterSpec(spec)
    # Worker 0 shares this process's thread pools with the coordinator.
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=3)
    servers = [tf.distribute.Server(cluster, job_name=job, task_index=i,
                                    config=config, protocol="grpc",
                                    start=True)
               for job, i in (("worker", 0), ("ps", 0), ("ps", 1))]
    strategy = tf.distribute.experimental.ParameterServerStrategy(
        tf.distribute.cluster_resolver.SimpleClusterResolver(
            cluster, rpc_layer="grpc"))
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(
        strategy)
    with strategy.scope():
      parts = {name: (dm.make_variables(dm.variable_kind(setting)),
                      dm.make_optimizer(setting))
               for name, setting in FACES.items()}
    batch = dm.data()

    @tf.function
    def train_step():
      def replica_step():
        x, ids, y = (tf.constant(a) for a in batch)
        return [dm.step(optimizer, variables, x, ids, y)
                for variables, optimizer in parts.values()]
      return strategy.run(replica_step)

    losses = [coordinator.schedule(train_step) for _ in range(STEPS)]
    coordinator.join()
    remote.send_signal(signal.SIGKILL)
    remote.wait()
    with open(os.path.join(out_dir, "killed"), "w") as f:
      f.write(str(remote.returncode))
    losses += [coordinator.schedule(train_step) for _ in range(STEPS)]
    coordinator.join()

    arrays = {"losses": np.array([l.fetch() for l in losses])}
    for name, (variables, optimizer) in parts.items():
      for key, value in dm.state(variables, optimizer).items():
        arrays[f"{name}/{key}"] = value
    np.savez(os.path.join(out_dir, "result.npz"), **arrays)
    del servers
  finally:
    if remote.poll() is None:
      remote.kill()
      remote.wait()
  sys.stdout.flush()
  # The coordinator keeps a thread waiting for worker 1 to come back.
  os._exit(0)  # pylint: disable=protected-access


if __name__ == "__main__":
  if sys.argv[1] == "--serve":
    serve(json.loads(sys.argv[2]))
  else:
    main(sys.argv[1])
