"""Every float dtype, in eager, tf.function and XLA, against Keras."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
MODES = ["eager", "function", "xla"]

CONFIGS = {
    # Keras's default epsilon, which is subnormal in float16.
    "clipvalue": dict(learning_rate=1.0, clipvalue=0.5),
    "decay_clipnorm_ema": dict(learning_rate=1.0, epsilon=1e-3,
                               weight_decay=0.05, clipnorm=0.7, use_ema=True,
                               ema_momentum=0.8, ema_overwrite_frequency=4),
    "everything": dict(
        learning_rate=0.5, rho=0.9, epsilon=1e-3, weight_decay=0.02,
        global_clipnorm=1.5, use_ema=True, ema_momentum=0.7,
        ema_overwrite_frequency=2, gradient_accumulation_steps=2),
}
# Compiling is slow, so tf.function and XLA run the config that has it all.
CASES = ([(config, "eager") for config in sorted(CONFIGS)] +
         [("everything", "function"), ("everything", "xla")])

# Relative tolerances of a few units in the last place; atol for values near 0.
TOLERANCES = {
    tf.float16: dict(rtol=4e-3, atol=2e-3),
    tf.bfloat16: dict(rtol=3e-2, atol=2e-2),
    tf.float32: dict(rtol=1e-6, atol=1e-7),
    tf.float64: dict(rtol=1e-12, atol=1e-14),
}

_SHAPES = [(), (3,), (4, 2)]


def _initial_values():
  rng = np.random.RandomState(7)
  return [rng.uniform(-2, 2, shape) for shape in _SHAPES]


def _grads(step, dtype):
  """The gradients of one step, drawn in float64 and rounded to `dtype`.

  They do not depend on the variables, so that rounding differences of one
  step are not amplified by the next; the last variable gets
  `tf.IndexedSlices` with a duplicate index.
  """
  rng = np.random.RandomState(100 + step)
  grads = [tf.constant(rng.uniform(-1.5, 1.5, shape), dtype)
           for shape in _SHAPES]
  rows = tf.constant([0, 2, 2])
  grads[-1] = tf.IndexedSlices(tf.gather(grads[-1], rows), rows,
                               tf.constant(_SHAPES[-1]))
  return grads


def _keras_slots(opt, index):
  slots = {
      "accumulated_grad": opt._accumulated_grads[index],  # pylint: disable=protected-access
      "accumulated_delta_var": opt._accumulated_delta_vars[index],  # pylint: disable=protected-access
  }
  if opt.use_ema:
    slots["average"] = opt._model_variables_moving_average[index]  # pylint: disable=protected-access
  if opt.gradient_accumulation_steps:
    slots["gradient_accumulator"] = opt._accumulated_gradients[index]  # pylint: disable=protected-access
  return slots


def _train(opt, dtype, mode, steps=6, grad_dtype=None):
  variables = [tf.Variable(tf.cast(v, dtype)) for v in _initial_values()]
  factor = opt.loss_scale_factor or 1.0

  def step_fn(grads):
    opt.apply_gradients(zip(grads, variables))

  if mode != "eager":
    step_fn = tf.function(step_fn, jit_compile=(mode == "xla"))
  for step in range(steps):
    # Scaled in float64 by a power of two, so unscaling is exact.
    step_fn([tf.cast(g * factor if isinstance(g, tf.Tensor) else
                     tf.IndexedSlices(g.values * factor, g.indices,
                                      g.dense_shape), grad_dtype or dtype)
             for g in _grads(step, tf.float64)])
  return variables


def _as_float64(value):
  return np.asarray(tf.cast(value, tf.float64).numpy())


def _assert_same_state(ours, theirs, ours_opt, keras_opt, dtype):
  tolerance = TOLERANCES[dtype]
  for index, (v, kv) in enumerate(zip(ours, theirs)):
    np.testing.assert_allclose(_as_float64(v), _as_float64(kv), **tolerance)
    for name, keras_slot in _keras_slots(keras_opt, index).items():
      slot = ours_opt.get_slot(v, name)
      assert slot.dtype == dtype, name
      np.testing.assert_allclose(_as_float64(slot), _as_float64(keras_slot),
                                 err_msg=name, **tolerance)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("config,mode", CASES)
def test_matches_keras(config, mode, dtype):
  kwargs = CONFIGS[config]
  ours_opt = tf_adadelta.Adadelta(**kwargs)
  keras_opt = keras.optimizers.Adadelta(**kwargs)
  ours = _train(ours_opt, dtype, mode)
  theirs = _train(keras_opt, dtype, mode)
  assert [v.dtype for v in ours] == [dtype] * len(_SHAPES)
  _assert_same_state(ours, theirs, ours_opt, keras_opt, dtype)
  # The accumulators must have moved, or the comparison proves nothing.
  assert np.max(_as_float64(ours_opt.get_slot(ours[1], "accumulated_grad"))) > 0.01
  assert ours_opt.iterations.numpy() == keras_opt.iterations.numpy() > 0


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16],
                         ids=lambda d: d.name)
def test_float32_gradients_on_half_variables_match_keras(dtype):
  # Gradients keep float32 until they reach the variable, as in mixed
  # precision; Keras clips them in float32 and casts in the update.
  kwargs = CONFIGS["decay_clipnorm_ema"]
  ours_opt = tf_adadelta.Adadelta(**kwargs)
  keras_opt = keras.optimizers.Adadelta(**kwargs)
  ours = _train(ours_opt, dtype, "function", grad_dtype=tf.float32)
  theirs = _train(keras_opt, dtype, "function", grad_dtype=tf.float32)
  _assert_same_state(ours, theirs, ours_opt, keras_opt, dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("grad_dtype", [tf.float16, tf.float32],
                         ids=lambda d: d.name)
def test_float16_clipnorm_does_not_overflow(grad_dtype, mode):
  # A norm of 9487 squares to 9e7, beyond float16's 65504: clipping must
  # still give a gradient of norm 1 (Keras's float32 result), not zeros.
  grad = tf.fill([1000], tf.constant(300.0, grad_dtype))
  var = tf.Variable(tf.ones([1000], tf.float16))
  expected_var = tf.Variable(tf.ones([1000], tf.float16))
  opt = tf_adadelta.Adadelta(learning_rate=1.0, clipnorm=1.0)
  step = lambda: opt.apply_gradients([(grad, var)])
  if mode != "eager":
    step = tf.function(step, jit_compile=(mode == "xla"))
  step()
  keras.optimizers.Adadelta(learning_rate=1.0, clipnorm=1.0).apply_gradients(
      [(tf.fill([1000], 300.0), expected_var)])
  clipped = 1.0 / np.sqrt(1000.0)
  np.testing.assert_allclose(
      _as_float64(opt.get_slot(var, "accumulated_grad")),
      np.full([1000], 0.05 * clipped**2), rtol=1e-2)
  np.testing.assert_allclose(_as_float64(var), _as_float64(expected_var),
                             rtol=1e-3)
  assert np.all(_as_float64(var) < 1.0)
