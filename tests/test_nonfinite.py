"""`skip_nonfinite_steps`: a NaN or Inf step changes nothing and is counted."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import distributed_model as dm
from tests import state_snapshot

MODES = ["eager", "function", "xla"]

CONFIGS = {
    "plain": dict(learning_rate=1.0),
    "everything": dict(learning_rate=1.0, weight_decay=0.05,
                       global_clipnorm=2.0, use_ema=True, ema_momentum=0.8,
                       ema_overwrite_frequency=2, loss_scale_factor=16.0,
                       gradient_accumulation_steps=2),
}

_SHAPES = [(3,), (2, 2)]
# The steps, in order: None is a finite step, a float is put into one
# element of the gradient of one variable.
_SCHEDULE = [None, None, float("nan"), None, float("inf"), None,
             float("-inf"), None, None]


def _initial_values():
  return [np.linspace(-1.0, 1.5, int(np.prod(s)), dtype=np.float32).reshape(s)
          for s in _SHAPES]


def _finite_grads(step, scale=1.0):
  rng = np.random.RandomState(step)
  return [tf.constant(rng.uniform(-1, 1, s).astype(np.float32) * scale)
          for s in _SHAPES]


def _bad_grads(step, value, scale, sparse):
  grads = _finite_grads(step, scale)
  target = step % 2
  flat = tf.tensor_scatter_nd_update(tf.reshape(grads[target], [-1]), [[1]],
                                     [value])
  grads[target] = tf.reshape(flat, _SHAPES[target])
  if sparse:
    # Only the values of an IndexedSlices gradient carry the NaN/Inf.
    grads[1] = tf.IndexedSlices(grads[1], tf.constant([0, 1]),
                                tf.constant(_SHAPES[1]))
  return grads


def _step_function(opt, variables, mode):
  def step(grads):
    opt.apply_gradients(zip(grads, variables))
  if mode == "eager":
    return step
  return tf.function(step, jit_compile=(mode == "xla"))


def _keras_config(config):
  return dict(CONFIGS[config])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_nonfinite_steps_change_nothing_and_later_steps_match_keras(config,
                                                                    mode):
  opt = tf_adadelta.Adadelta(**CONFIGS[config], skip_nonfinite_steps=True)
  scale = opt.loss_scale_factor or 1.0
  variables = [tf.Variable(v) for v in _initial_values()]
  step = _step_function(opt, variables, mode)

  keras_opt = keras.optimizers.Adadelta(**_keras_config(config))
  reference = [tf.Variable(v) for v in _initial_values()]
  keras_step = _step_function(keras_opt, reference, mode)

  skipped = 0
  for index, value in enumerate(_SCHEDULE):
    if value is None:
      grads = _finite_grads(index, scale)
      step(grads)
      keras_step(grads)
      continue
    # Dense in the even steps, tf.IndexedSlices in the odd ones.
    before = state_snapshot.snapshot(opt, variables,
                                     exclude=[opt.skipped_steps])
    step(_bad_grads(index, value, scale, sparse=index % 2 == 1))
    skipped += 1
    state_snapshot.assert_unchanged(before, opt, variables,
                                    exclude=[opt.skipped_steps])
    assert opt.skipped_steps.numpy() == skipped

  finite_steps = _SCHEDULE.count(None)
  assert keras_opt.iterations.numpy() == opt.iterations.numpy()
  assert opt.iterations.numpy() == (
      finite_steps // (opt.gradient_accumulation_steps or 1))
  if opt.gradient_accumulation_steps:
    assert opt.micro_iterations.numpy() == finite_steps
  for ours, theirs in zip(variables, reference):
    assert np.all(np.isfinite(ours.numpy()))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6,
                               atol=1e-7)
  moved = max(np.max(np.abs(v.numpy() - i))
              for v, i in zip(variables, _initial_values()))
  assert moved > 1e-3


def test_off_by_default_nonfinite_step_gives_keras_nan():
  opt = tf_adadelta.Adadelta(learning_rate=1.0)
  keras_opt = keras.optimizers.Adadelta(learning_rate=1.0)
  assert not opt.skip_nonfinite_steps
  assert not hasattr(opt, "skipped_steps")
  var, ref = tf.Variable([1.0, 2.0]), tf.Variable([1.0, 2.0])
  grad = tf.constant([float("nan"), 1.0])
  opt.apply_gradients([(grad, var)])
  keras_opt.apply_gradients([(grad, ref)])
  np.testing.assert_array_equal(var.numpy(), ref.numpy())
  assert np.isnan(var.numpy()[0])
  assert opt.iterations.numpy() == 1


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float64],
                         ids=lambda d: d.name)
def test_half_and_double_variables(dtype):
  # 1e5 is finite in float32 but Inf once cast to float16.
  opt = tf_adadelta.Adadelta(learning_rate=1.0, clipnorm=1.0,
                             skip_nonfinite_steps=True)
  var = tf.Variable(tf.constant([1.0, -1.0], dtype))
  step = tf.function(lambda g: opt.apply_gradients([(g, var)]))
  step(tf.constant([0.5, 0.25], tf.float32))
  before = state_snapshot.snapshot(opt, [var], exclude=[opt.skipped_steps])
  bad = 1e5 if dtype == tf.float16 else float("inf")
  step(tf.constant([bad, 0.25], tf.float32))
  state_snapshot.assert_unchanged(before, opt, [var],
                                  exclude=[opt.skipped_steps])
  assert opt.skipped_steps.numpy() == 1
  assert opt.iterations.numpy() == 1


def test_counter_variable_config_and_checkpoint(tmp_path):
  opt = tf_adadelta.Adadelta(skip_nonfinite_steps=True)
  counter = opt.skipped_steps
  assert counter.dtype == tf.int64 and not counter.trainable
  assert counter.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA
  assert any(v is counter for v in opt.variables)
  config = opt.get_config()
  assert config["skip_nonfinite_steps"] is True
  assert tf_adadelta.Adadelta.from_config(config).skip_nonfinite_steps
  assert tf_adadelta.Adadelta().get_config()["skip_nonfinite_steps"] is False

  var = tf.Variable([1.0])
  opt.apply_gradients([(tf.constant([float("nan")]), var)])
  path = tf.train.Checkpoint(optimizer=opt).save(str(tmp_path / "ckpt"))
  restored = tf_adadelta.Adadelta(skip_nonfinite_steps=True)
  tf.train.Checkpoint(optimizer=restored).restore(path).assert_consumed()
  assert restored.skipped_steps.numpy() == 1


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_mirrored_nonfinite_on_one_replica_skips_everywhere(mode):
  strategy = dm.mirrored_strategy()
  with strategy.scope():
    var = tf.Variable([1.0, -2.0, 0.5])
    opt = tf_adadelta.Adadelta(learning_rate=1.0, use_ema=True,
                               gradient_accumulation_steps=2,
                               skip_nonfinite_steps=True)

  def replica_step(bad):
    context = tf.distribute.get_replica_context()
    local = tf.constant([0.5, -0.25, 1.0]) * tf.cast(
        context.replica_id_in_sync_group + 1, tf.float32)
    # Only the second replica's local gradient is non-finite.
    local = tf.where(
        tf.logical_and(bad, tf.equal(context.replica_id_in_sync_group, 1)),
        tf.constant([float("nan"), 0.0, 0.0]), local)
    opt.apply_gradients([(local, var)])

  def train(bad):
    strategy.run(replica_step, args=(bad,))
  if mode == "function":
    train = tf.function(train)

  def copies():
    return [x.numpy() for x in strategy.experimental_local_results(var)]

  for bad in [False, False, False]:
    train(tf.constant(bad))
  before = state_snapshot.snapshot(opt, [var], exclude=[opt.skipped_steps])
  before_copies = copies()
  train(tf.constant(True))
  state_snapshot.assert_unchanged(before, opt, [var],
                                  exclude=[opt.skipped_steps])
  for old, new in zip(before_copies, copies()):
    np.testing.assert_array_equal(old, new)
  assert opt.skipped_steps.numpy() == 1
  train(tf.constant(False))

  # One device on the summed gradient, never shown the bad step.
  reference = tf.Variable([1.0, -2.0, 0.5])
  keras_opt = keras.optimizers.Adadelta(learning_rate=1.0, use_ema=True,
                                        gradient_accumulation_steps=2)
  for _ in range(4):
    keras_opt.apply_gradients([(tf.constant([0.5, -0.25, 1.0]) * 3.0,
                                reference)])
  for copy in copies():
    np.testing.assert_allclose(copy, reference.numpy(), rtol=1e-6)
  assert opt.iterations.numpy() == 2


def test_parameter_server_sharded_variables(tmp_path):
  # A separate process: TensorFlow connects a process to one cluster.
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                        "nonfinite_parameter_server.py")
  env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
  env.pop("TF_CONFIG", None)
  process = subprocess.run([sys.executable, script, str(tmp_path)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=240, check=False)
  assert process.returncode == 0, process.stdout[-4000:]
  with np.load(str(tmp_path / "result.npz")) as result:
    arrays = dict(result)

  from tests import nonfinite_parameter_server as ps  # pylint: disable=g-import-not-at-top
  for index, bad in enumerate(ps.SCHEDULE):
    if not bad:
      continue
    before = sorted(k for k in arrays if k.startswith(f"before_{index}/"))
    assert before
    for key in before:
      after = arrays[key.replace("before_", "after_")]
      assert arrays[key].tobytes() == after.tobytes(), key
  assert arrays["skipped_steps"] == sum(ps.SCHEDULE)
  finite_steps = ps.SCHEDULE.count(False)
  assert arrays["micro_iterations"] == finite_steps
  assert arrays["iterations"] == finite_steps // 2

  # Keras on one device, shown only the finite steps.
  keras_opt = keras.optimizers.Adadelta(**ps.CONFIG)
  reference = [tf.Variable(v) for v in ps.INITIAL]
  for _ in range(finite_steps):
    keras_opt.apply_gradients(zip([tf.constant(g) for g in ps.GRADS],
                                  reference))
  for i, variable in enumerate(reference):
    assert arrays[f"shards/{i}"] == 2
    np.testing.assert_allclose(arrays[f"var/{i}"], variable.numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(
        arrays[f"average/{i}"],
        keras_opt._model_variables_moving_average[i].numpy(),  # pylint: disable=protected-access
        rtol=1e-6)
