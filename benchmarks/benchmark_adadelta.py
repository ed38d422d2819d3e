r"""Times one optimizer step of `tf_adadelta.Adadelta` against its neighbours.

Every contender of a row updates its own copy of the same variables with the
same gradients, inside its own `tf.function`. Contenders are timed in one
process, interleaved round by round (so a noisy neighbour slows all of them
alike), and each figure is the median over the rounds.

Reported per contender: milliseconds per step, throughput in GB/s counted as
28 bytes per parameter (a float32 Adadelta step reads the variable, its two
slots and the gradient and writes the variable and its two slots, whatever the
contender really moves), and the time relative to the row's baseline.

Contenders:
  fused kernel       `tf.raw_ops.ResourceApplyAdadelta` per variable (dense
                     gradients), the floor for the default step.
  keras              `keras.optimizers.Adadelta`, same arguments, in
                     `tf.function`; `keras jit` with `jit_compile=True`.
  tf_adadelta        `tf_adadelta.Adadelta` (`jit_compile=None`, the automatic
                     choice); `tf_adadelta jit` / `tf_adadelta no-jit` force it.
                     On sparse workloads `tf_adadelta lazy` is the
                     `sparse_updates="lazy"` mode, whose baseline is
                     `tf.raw_ops.ResourceSparseApplyAdadelta` (same semantics).
  memory reference   one `assign_add` over a flat buffer moving the same 28
                     bytes per parameter: what memory bandwidth allows.
  ..., N device(s)   the `mirrored` workload: the step inside
                     `strategy.run` of a `MirroredStrategy` over N logical
                     CPUs (one process, so the devices share the cores; the
                     figure is the cost of replication and all-reduce).
  accumulator RMW    `assign_add` of each gradient into a variable: the cost a
                     gradient-accumulation micro-step should match.

Usage:
  python benchmarks/benchmark_adadelta.py            # the README's table
  python benchmarks/benchmark_adadelta.py --quick    # a tiny smoke run
"""

import gc
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import keras
import numpy as np
import tensorflow as tf

import tf_adadelta

FLAGS = flags.FLAGS
flags.DEFINE_list("workloads", ["resnet50", "small", "large", "embedding"],
                  "Workloads to run: resnet50, small, large, embedding, "
                  "embedding_0.1 (the table with a tenth of the rows), "
                  "mirrored (ResNet-50 under MirroredStrategy on 1 and 2 "
                  "logical CPUs).")
flags.DEFINE_list("configs", ["default", "featured", "accumulation",
                              "loss_scale"],
                  "Optimizer configurations to run.")
flags.DEFINE_integer("rounds", 40, "Timed rounds (one step per contender).")
flags.DEFINE_integer("warmup", 3, "Untimed rounds before timing.")
flags.DEFINE_bool("quick", False,
                  "A tiny workload and few rounds, to check the script runs.")
flags.DEFINE_bool("jit_variants", True,
                  "Also time tf_adadelta with jit_compile forced on and off.")
flags.DEFINE_bool("keras_jit", True,
                  "Also time Keras with jit_compile=True (dense gradients "
                  "only: Keras's sparse update does not compile).")

BYTES_PER_PARAM = 28
ACCUMULATION_STEPS = 2
LOSS_SCALE = 1024.0

# Optimizer arguments per configuration, the same for Keras and tf_adadelta.
CONFIGS = {
    "default": dict(learning_rate=1.0),
    "featured": dict(learning_rate=1.0, weight_decay=1e-4, global_clipnorm=1.0,
                     use_ema=True),
    "accumulation": dict(learning_rate=1.0,
                         gradient_accumulation_steps=ACCUMULATION_STEPS),
    "loss_scale": dict(learning_rate=1.0, loss_scale_factor=LOSS_SCALE),
}


# --- Workloads ----------------------------------------------------------------

def resnet50_shapes() -> List[Tuple[int, ...]]:
  """The trainable shapes of ResNet-50 (random weights, nothing downloaded)."""
  model = keras.applications.ResNet50(weights=None)
  shapes = [tuple(int(d) for d in v.shape) for v in model.trainable_variables]
  del model
  keras.backend.clear_session()
  return shapes


class Workload:
  """Shapes plus fixed gradients shared (read-only) by every contender."""

  def __init__(self, name: str, shapes: Sequence[Tuple[int, ...]],
               sparse_rows: Optional[int] = None, mirrored: bool = False):
    self.name = name
    self.mirrored = mirrored
    self.shapes = list(shapes)
    self.params = sum(int(np.prod(s)) for s in self.shapes)
    rng = np.random.default_rng(0)
    self.initial = [rng.standard_normal(s, dtype=np.float32) * 0.1
                    for s in self.shapes]
    if sparse_rows is None:
      self.grads = [tf.constant(rng.standard_normal(s, dtype=np.float32))
                    for s in self.shapes]
      self.sparse = False
    else:
      (rows, cols), = self.shapes
      indices = np.sort(rng.choice(rows, sparse_rows, replace=False))
      self.grads = [tf.IndexedSlices(
          tf.constant(rng.standard_normal((sparse_rows, cols),
                                          dtype=np.float32)),
          tf.constant(indices, tf.int64), tf.constant([rows, cols], tf.int64))]
      self.sparse = True

  def scaled_grads(self, factor: float):
    """The gradients multiplied by `factor` (what a scaled loss produces)."""
    def scale(g):
      if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(g.values * factor, g.indices, g.dense_shape)
      return g * factor
    return [scale(g) for g in self.grads]


def make_workloads(names: Sequence[str], quick: bool) -> Dict[str, Callable]:
  """Maps each workload name to a constructor (built one at a time)."""
  if quick:
    makers = {
        "resnet50": lambda: Workload("resnet50 (quick: 8 conv-like tensors)",
                                     [(3, 3, 16, 16), (16,)] * 4),
        "small": lambda: Workload("20 x (64, 64)", [(64, 64)] * 20),
        "large": lambda: Workload("(256, 256)", [(256, 256)]),
        "embedding": lambda: Workload("(1000, 16), 1% rows", [(1000, 16)],
                                      sparse_rows=10),
        "embedding_0.1": lambda: Workload("(1000, 16), 0.1% rows",
                                          [(1000, 16)], sparse_rows=1),
        "mirrored": lambda: Workload("mirrored (quick: 4 tensors)",
                                     [(64, 64)] * 4, mirrored=True),
    }
  else:
    makers = {
        "resnet50": lambda: Workload("ResNet-50 (214 tensors)",
                                     resnet50_shapes()),
        "small": lambda: Workload("2,000 x (64, 64)", [(64, 64)] * 2000),
        "large": lambda: Workload("(4096, 4096)", [(4096, 4096)]),
        "embedding": lambda: Workload("(1000000, 64), IndexedSlices 1% rows",
                                      [(1_000_000, 64)], sparse_rows=10_000),
        "embedding_0.1": lambda: Workload(
            "(1000000, 64), IndexedSlices 0.1% rows", [(1_000_000, 64)],
            sparse_rows=1_000),
        "mirrored": lambda: Workload("ResNet-50, MirroredStrategy",
                                     resnet50_shapes(), mirrored=True),
    }
  unknown = set(names) - set(makers)
  if unknown:
    raise ValueError(f"Unknown workloads: {sorted(unknown)}")
  return {n: makers[n] for n in names}


# --- Contenders ---------------------------------------------------------------

class Contender:
  """A named step function and its timings, by phase of the step."""

  def __init__(self, name: str, step: Callable[[], object]):
    self.name = name
    self.step = step
    self.times: Dict[str, List[float]] = {}


def _variables(workload: Workload, keras_variables: bool = False):
  make = keras.Variable if keras_variables else tf.Variable
  return [make(v) for v in workload.initial]


def fused_kernel(workload: Workload, lr: float = 1.0) -> Callable:
  variables = _variables(workload)
  slots = [(tf.Variable(tf.zeros_like(v)), tf.Variable(tf.zeros_like(v)))
           for v in variables]

  @tf.function(autograph=False)
  def step(grads):
    hyper = dict(lr=tf.constant(lr), rho=tf.constant(0.95),
                 epsilon=tf.constant(1e-7))
    for g, v, (acc, acc_update) in zip(grads, variables, slots):
      if isinstance(g, tf.IndexedSlices):
        tf.raw_ops.ResourceSparseApplyAdadelta(
            var=v.handle, accum=acc.handle, accum_update=acc_update.handle,
            grad=g.values, indices=g.indices, **hyper)
      else:
        tf.raw_ops.ResourceApplyAdadelta(
            var=v.handle, accum=acc.handle, accum_update=acc_update.handle,
            grad=g, **hyper)

  return step


def keras_adadelta(workload: Workload, config: dict, jit: bool) -> Callable:
  variables = _variables(workload, keras_variables=True)
  optimizer = keras.optimizers.Adadelta(**config)
  optimizer.build(variables)
  return tf.function(lambda grads: optimizer.apply(grads, variables),
                     jit_compile=jit, autograph=False)


def our_adadelta(workload: Workload, config: dict,
                 jit: Optional[bool]) -> Callable:
  variables = _variables(workload)
  optimizer = tf_adadelta.Adadelta(**config, jit_compile=jit)
  optimizer.build(variables)
  return tf.function(lambda grads: optimizer.apply(grads, variables),
                     autograph=False)


def memory_reference(workload: Workload) -> Callable:
  """`assign_add` over 28/12 x params floats: 28 bytes moved per parameter."""
  size = workload.params * BYTES_PER_PARAM // 12
  buffer = tf.Variable(tf.zeros([size]))
  addend = tf.ones([size])

  @tf.function(autograph=False)
  def step(grads):
    del grads
    buffer.assign_add(addend)

  return step


def accumulator_rmw(workload: Workload) -> Callable:
  accumulators = [tf.Variable(tf.zeros(s)) for s in workload.shapes]

  @tf.function(autograph=False)
  def step(grads):
    for g, a in zip(grads, accumulators):
      a.assign_add(g)

  return step


def mirrored_step(workload: Workload, config: dict, devices: int,
                  use_keras: bool) -> Callable:
  """The step in `strategy.run` of a MirroredStrategy over `devices` CPUs."""
  strategy = tf.distribute.MirroredStrategy(
      [f"/cpu:{i}" for i in range(devices)])
  with strategy.scope():
    variables = _variables(workload, keras_variables=use_keras)
    optimizer = (keras.optimizers.Adadelta(**config) if use_keras
                 else tf_adadelta.Adadelta(**config))
    optimizer.build(variables)

  def replica_step(*grads):
    # Gradients made on the replica's device, as a backward pass makes them
    # (all-reduce needs to know where each one lives).
    optimizer.apply([tf.identity(g) for g in grads], variables)

  @tf.function(autograph=False)
  def step(grads):
    strategy.run(replica_step, args=tuple(grads))

  return step


def contenders_for(workload: Workload, config_name: str) -> List[Contender]:
  config = CONFIGS[config_name]
  out = []
  if workload.mirrored:
    for devices in (1, 2):
      label = f"{devices} device" + ("s" if devices > 1 else "")
      out.append(Contender(f"keras, {label}",
                           mirrored_step(workload, config, devices, True)))
      out.append(Contender(f"tf_adadelta, {label}",
                           mirrored_step(workload, config, devices, False)))
    return out
  if config_name == "default" and not workload.sparse:
    out.append(Contender("fused kernel", fused_kernel(workload)))
  # TensorFlow's sparse Adadelta kernel exists on the CPU only.
  if (config_name == "default" and workload.sparse and
      not tf.config.list_logical_devices("GPU")):
    out.append(Contender("TF1 sparse kernel (lazy semantics)",
                         fused_kernel(workload)))
  out.append(Contender("keras", keras_adadelta(workload, config, jit=False)))
  if FLAGS.keras_jit and not workload.sparse:
    out.append(Contender("keras jit", keras_adadelta(workload, config,
                                                     jit=True)))
  out.append(Contender("tf_adadelta", our_adadelta(workload, config, None)))
  if FLAGS.jit_variants:
    out.append(Contender("tf_adadelta jit",
                         our_adadelta(workload, config, True)))
    out.append(Contender("tf_adadelta no-jit",
                         our_adadelta(workload, config, False)))
  if workload.sparse:
    out.append(Contender("tf_adadelta lazy", our_adadelta(
        workload, dict(config, sparse_updates="lazy"), None)))
  if config_name == "accumulation":
    out.append(Contender("accumulator RMW", accumulator_rmw(workload)))
  if not workload.sparse and config_name in ("default", "featured"):
    out.append(Contender("memory reference", memory_reference(workload)))
  return out


# --- Timing -------------------------------------------------------------------

def _phase(config_name: str, contender: Contender, call: int) -> str:
  """Accumulation rows time micro-steps and applying steps separately."""
  if config_name != "accumulation" or contender.name == "accumulator RMW":
    return "micro-step" if config_name == "accumulation" else "step"
  return "apply step" if (call + 1) % ACCUMULATION_STEPS == 0 else "micro-step"


def time_row(workload: Workload, config_name: str, rounds: int, warmup: int
             ) -> List[Contender]:
  contenders = contenders_for(workload, config_name)
  grads = (workload.scaled_grads(LOSS_SCALE) if config_name == "loss_scale"
           else workload.grads)
  # Keep the number of calls per contender a multiple of the accumulation
  # steps, so every contender sees both phases.
  calls_per_round = ACCUMULATION_STEPS if config_name == "accumulation" else 1
  for r in range(warmup + rounds):
    # Rotate the order so no contender always runs right after another one.
    order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
    for contender in order:
      for c in range(calls_per_round):
        start = time.perf_counter()
        contender.step(grads)
        elapsed = time.perf_counter() - start
        if r >= warmup:
          call = r * calls_per_round + c
          contender.times.setdefault(
              _phase(config_name, contender, call), []).append(elapsed)
  return contenders


def report(workload: Workload, config_name: str,
           contenders: Sequence[Contender]) -> List[List[str]]:
  rows = []
  medians = {(c.name, phase): statistics.median(ts)
             for c in contenders for phase, ts in c.times.items()}
  for phase in sorted({p for (_, p) in medians}):
    baseline_name = next(
        (n for n in ("fused kernel", "keras", "tf_adadelta, 1 device")
         if (n, phase) in medians), None)
    if phase == "micro-step":
      baseline_name = "accumulator RMW"
    base_time = medians[(baseline_name, phase)]
    for c in contenders:
      if (c.name, phase) not in medians:
        continue
      t = medians[(c.name, phase)]
      # Under a strategy, Keras on as many devices.
      keras_name = ("keras" + c.name[len("tf_adadelta"):]
                    if c.name.startswith("tf_adadelta,") else "keras")
      keras_time = medians.get((keras_name, phase))
      gbps = workload.params * BYTES_PER_PARAM / t / 1e9
      rows.append([
          workload.name, config_name, phase, c.name, f"{t * 1e3:.2f}",
          f"{gbps:.1f}", f"{t / base_time:.2f}x {baseline_name}",
          f"{keras_time / t:.2f}x" if keras_time else "",
      ])
  return rows


HEADER = ["workload", "config", "phase", "contender", "ms/step", "GB/s",
          "time vs baseline", "speed-up vs keras"]


def print_rows(rows: Sequence[Sequence[str]]) -> None:
  for row in rows:
    print("| " + " | ".join(row) + " |")
  sys.stdout.flush()


def main(argv):
  del argv
  rounds, warmup = FLAGS.rounds, FLAGS.warmup
  if FLAGS.quick:
    rounds, warmup = 3, 1
  unknown = set(FLAGS.configs) - set(CONFIGS)
  if unknown:
    raise ValueError(f"Unknown configs: {sorted(unknown)}")
  if "mirrored" in FLAGS.workloads:
    # Before TensorFlow initializes its devices: two logical CPUs.
    cpu, = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
        f"{os.cpu_count()} CPUs, devices: "
        f"{[d.device_type for d in tf.config.list_logical_devices()]}; "
        f"median of {rounds} interleaved rounds")
  print_rows([HEADER])
  print("|" + "|".join("---" for _ in HEADER) + "|")
  for make in make_workloads(FLAGS.workloads, FLAGS.quick).values():
    workload = make()
    for config_name in FLAGS.configs:
      if workload.sparse and config_name != "default":
        continue
      if workload.mirrored and config_name not in ("default", "featured"):
        continue
      contenders = time_row(workload, config_name, rounds, warmup)
      print_rows(report(workload, config_name, contenders))
      # Free this row's variables before the next one is built.
      del contenders
      keras.backend.clear_session()
      gc.collect()
    del workload


if __name__ == "__main__":
  app.run(main)
