r"""Times the first step (trace, slot creation, compile) and how it scales.

What a user waits on before training starts is the first call of their
`tf.function` step: tracing it, creating the optimizer's slots inside it and,
with XLA, compiling. Each contender runs in a fresh process of its own (so no
trace cache, no loaded kernels, no compiled code is shared), builds its
variables and gradients, then times that first call; after it, the same
process times steady steps (median of --steady_rounds calls).

Contenders:
  fused kernel       a loop of `tf.raw_ops.ResourceApplyAdadelta`, its
                     accumulators made beforehand: the floor.
  tf_adadelta        `tf_adadelta.Adadelta(1.0)`, slots created inside the
                     `tf.function` (no `build()`), the user's path.
  keras              `keras.optimizers.Adadelta(1.0)` on `keras.Variable`s,
                     built inside the `tf.function` as well.
  tf_adadelta.keras  `tf_adadelta.keras.Adadelta(1.0)` (the Keras face) on
                     `keras.Variable`s, built inside the `tf.function` (not
                     in the default list; pass --contenders).
  ... featured       the same with weight_decay=1e-4, global_clipnorm=1.0 and
                     use_ema=True.

Workloads:
  resnet50           ResNet-50's 214 trainable shapes (random weights).
  scaling            --total_params float32 parameters split evenly into
                     --variable_counts variables: how the first and the
                     steady step grow with the number of variables.

Usage:
  python benchmarks/benchmark_first_step.py                  # the README's tables
  python benchmarks/benchmark_first_step.py --quick          # a tiny smoke run
  python benchmarks/benchmark_first_step.py --workloads scaling

The steady-step figures here come from separate processes, so they are
indicative; `benchmark_adadelta.py` compares steady steps interleaved in one
process.
"""

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["resnet50", "scaling"],
                  "Workloads: resnet50, scaling.")
flags.DEFINE_list("contenders", ["fused kernel", "tf_adadelta", "keras",
                                 "tf_adadelta featured", "keras featured"],
                  "Contenders to run (see the module docstring).")
flags.DEFINE_list("variable_counts", ["10", "100", "1000", "5000"],
                  "Numbers of variables of the scaling workload.")
flags.DEFINE_integer("total_params", 5_000_000,
                     "Parameters of the scaling workload, split evenly.")
flags.DEFINE_integer("steady_rounds", 20,
                     "Steady steps timed after the first (median reported).")
flags.DEFINE_integer("keras_max_variables", 1000,
                     "Scaling rows with more variables skip Keras, whose "
                     "first step there takes many minutes.")
flags.DEFINE_bool("quick", False, "Tiny workloads, to check the script runs.")
flags.DEFINE_string("child", None, "Internal: run one contender (JSON spec).")

FEATURED = dict(weight_decay=1e-4, global_clipnorm=1.0, use_ema=True)


# --- One contender, in its own process ----------------------------------------

def _contender_step(name: str, shapes: Sequence[Tuple[int, ...]]):
  """Builds variables, gradients and the step function of one contender."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  initial = [rng.standard_normal(s, dtype=np.float32) * 0.1 for s in shapes]
  grads = [tf.constant(rng.standard_normal(s, dtype=np.float32))
           for s in shapes]
  config = dict(learning_rate=1.0, **(FEATURED if "featured" in name else {}))

  if name == "fused kernel":
    variables = [tf.Variable(v) for v in initial]
    slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v)))
             for v in variables]

    @tf.function(autograph=False)
    def step(grads):
      hyper = dict(lr=tf.constant(1.0), rho=tf.constant(0.95),
                   epsilon=tf.constant(1e-7))
      for g, v, (acc, acc_update) in zip(grads, variables, slots):
        tf.raw_ops.ResourceApplyAdadelta(
            var=v.handle, accum=acc.handle, accum_update=acc_update.handle,
            grad=g, **hyper)
  elif name.startswith("keras") or name.startswith("tf_adadelta.keras"):
    import tf_adadelta  # pylint: disable=g-import-not-at-top
    variables = [keras.Variable(v) for v in initial]
    face = (keras.optimizers.Adadelta if name.startswith("keras")
            else tf_adadelta.keras.Adadelta)
    optimizer = face(**config)
    step = tf.function(lambda grads: optimizer.apply(grads, variables))
  elif name.startswith("tf_adadelta"):
    import tf_adadelta  # pylint: disable=g-import-not-at-top
    variables = [tf.Variable(v) for v in initial]
    optimizer = tf_adadelta.Adadelta(**config)
    step = tf.function(lambda grads: optimizer.apply(grads, variables))
  else:
    raise ValueError(f"Unknown contender: {name!r}")
  return step, grads, variables


def run_child(spec: Dict) -> Dict:
  """Times the first and the steady steps of one contender."""
  step, grads, variables = _contender_step(spec["contender"],
                                           [tuple(s) for s in spec["shapes"]])
  last = variables[-1]
  start = time.perf_counter()
  step(grads)
  last.numpy()  # Waits for the step to finish.
  first = time.perf_counter() - start
  steady = []
  for _ in range(spec["steady_rounds"]):
    start = time.perf_counter()
    step(grads)
    last.numpy()
    steady.append(time.perf_counter() - start)
  return {"first_s": first, "steady_s": statistics.median(steady)}


# --- The parent: one process per contender ------------------------------------

def resnet50_shapes() -> List[Tuple[int, ...]]:
  """The trainable shapes of ResNet-50, read in a child process."""
  code = ("import os; os.environ['TF_CPP_MIN_LOG_LEVEL']='2'; import json, "
          "keras; m = keras.applications.ResNet50(weights=None); "
          "print(json.dumps([list(map(int, v.shape)) "
          "for v in m.trainable_variables]))")
  out = subprocess.run([sys.executable, "-c", code], check=True,
                       capture_output=True, text=True).stdout
  return [tuple(s) for s in json.loads(out.strip().splitlines()[-1])]


def scaling_shapes(count: int, total: int) -> List[Tuple[int, ...]]:
  return [(max(1, total // count),)] * count


def measure(contender: str, shapes, steady_rounds: int) -> Dict:
  spec = json.dumps({"contender": contender, "shapes": [list(s) for s in shapes],
                     "steady_rounds": steady_rounds})
  result = subprocess.run(
      [sys.executable, os.path.abspath(__file__), "--child", spec],
      check=False, capture_output=True, text=True)
  for line in reversed(result.stdout.splitlines()):
    if line.startswith("RESULT="):
      return json.loads(line[len("RESULT="):])
  raise RuntimeError(f"{contender} failed:\n{result.stderr[-3000:]}")


def _row(cells: Sequence[str]) -> None:
  print("| " + " | ".join(cells) + " |", flush=True)


def resnet50_table(contenders, steady_rounds, quick) -> None:
  shapes = ([(3, 3, 16, 16), (16,)] * 4 if quick else resnet50_shapes())
  print(f"\nResNet-50 shapes: {len(shapes)} variables, "
        f"{len(set(shapes))} distinct shapes, float32")
  header = ["contender", "first step (s)", "vs fused kernel", "vs keras",
            "steady step (ms)"]
  _row(header)
  _row(["---"] * len(header))
  results = {c: measure(c, shapes, steady_rounds) for c in contenders}
  fused = results.get("fused kernel")
  for name, result in results.items():
    keras_name = "keras featured" if "featured" in name else "keras"
    keras_result = results.get(keras_name)
    _row([name, f"{result['first_s']:.2f}",
          f"{result['first_s'] / fused['first_s']:.1f}x" if fused else "",
          (f"{keras_result['first_s'] / result['first_s']:.1f}x faster"
           if keras_result and not name.startswith("keras") else ""),
          f"{result['steady_s'] * 1e3:.2f}"])


def scaling_table(contenders, counts, total, steady_rounds,
                  keras_max_variables) -> None:
  print(f"\nScaling: {total:,} float32 parameters split into N variables")
  header = ["variables", "contender", "first step (s)", "steady step (ms)",
            "first step vs keras", "steady vs keras"]
  _row(header)
  _row(["---"] * len(header))
  for count in counts:
    shapes = scaling_shapes(count, total)
    results = {c: measure(c, shapes, steady_rounds) for c in contenders
               if not (c.startswith("keras") and count > keras_max_variables)}
    for name in contenders:
      if name not in results:
        _row([str(count), name, "not run (--keras_max_variables)", "", "",
              ""])
        continue
      result = results[name]
      keras_name = "keras featured" if "featured" in name else "keras"
      ref = results.get(keras_name)
      faster = ref and not name.startswith("keras")
      _row([str(count), name, f"{result['first_s']:.2f}",
            f"{result['steady_s'] * 1e3:.2f}",
            f"{ref['first_s'] / result['first_s']:.1f}x faster" if faster
            else "",
            f"{ref['steady_s'] / result['steady_s']:.1f}x faster" if faster
            else ""])


def main(argv):
  del argv
  if FLAGS.child:
    print("RESULT=" + json.dumps(run_child(json.loads(FLAGS.child))))
    return
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  steady_rounds = 3 if FLAGS.quick else FLAGS.steady_rounds
  print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"{os.cpu_count()} CPUs; a fresh process per contender")
  for workload in FLAGS.workloads:
    if workload == "resnet50":
      resnet50_table(FLAGS.contenders, steady_rounds, FLAGS.quick)
    elif workload == "scaling":
      counts = [int(c) for c in FLAGS.variable_counts]
      total = FLAGS.total_params
      if FLAGS.quick:
        counts, total = [2, 8], 4096
      scaling_table([c for c in FLAGS.contenders if c != "fused kernel"],
                    counts, total, steady_rounds, FLAGS.keras_max_variables)
    else:
      raise ValueError(f"Unknown workload: {workload!r}")


if __name__ == "__main__":
  app.run(main)
