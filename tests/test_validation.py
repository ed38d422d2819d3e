"""Bad arguments and bad gradients: a clear error, and nothing changed."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import state_snapshot

# --- Constructor -----------------------------------------------------------

_BAD_CONSTRUCTOR_ARGS = [
    # (keyword arguments, error type, text the message must contain)
    (dict(rho=-0.1), ValueError, "rho"),
    (dict(rho=1.5), ValueError, "rho"),
    (dict(rho="0.9"), TypeError, "rho"),
    (dict(rho=float("nan")), ValueError, "rho"),
    (dict(epsilon=0.0), ValueError, "epsilon"),
    (dict(epsilon=-1e-7), ValueError, "epsilon"),
    (dict(weight_decay=-0.01), ValueError, "weight_decay"),
    (dict(weight_decay="a"), TypeError, "weight_decay"),
    (dict(clipnorm=0.0), ValueError, "clipnorm"),
    (dict(clipnorm=-1.0), ValueError, "clipnorm"),
    (dict(clipvalue=0.0), ValueError, "clipvalue"),
    (dict(clipvalue=-0.5), ValueError, "clipvalue"),
    (dict(global_clipnorm=0.0), ValueError, "global_clipnorm"),
    (dict(global_clipnorm=-2.0), ValueError, "global_clipnorm"),
    (dict(clipnorm=1.0, clipvalue=1.0), ValueError, "clipvalue"),
    (dict(clipnorm=1.0, global_clipnorm=1.0), ValueError, "global_clipnorm"),
    (dict(clipvalue=1.0, global_clipnorm=1.0), ValueError, "global_clipnorm"),
    (dict(ema_momentum=-0.01), ValueError, "ema_momentum"),
    (dict(ema_momentum=1.01), ValueError, "ema_momentum"),
    (dict(use_ema=True, ema_momentum=2.0), ValueError, "ema_momentum"),
    (dict(use_ema="yes"), TypeError, "use_ema"),
    (dict(ema_overwrite_frequency=0), ValueError, "ema_overwrite_frequency"),
    (dict(ema_overwrite_frequency=-3), ValueError, "ema_overwrite_frequency"),
    (dict(ema_overwrite_frequency=2.5), TypeError, "ema_overwrite_frequency"),
    (dict(gradient_accumulation_steps=1), ValueError,
     "gradient_accumulation_steps"),
    (dict(gradient_accumulation_steps=0), ValueError,
     "gradient_accumulation_steps"),
    (dict(gradient_accumulation_steps=2.0), TypeError,
     "gradient_accumulation_steps"),
    (dict(gradient_accumulation_steps=True), TypeError,
     "gradient_accumulation_steps"),
    (dict(loss_scale_factor=0.0), ValueError, "loss_scale_factor"),
    (dict(loss_scale_factor=-128.0), ValueError, "loss_scale_factor"),
    (dict(learning_rate="0.1"), TypeError, "learning_rate"),
    (dict(learning_rate=None), TypeError, "learning_rate"),
    (dict(learning_rate=[0.1]), TypeError, "learning_rate"),
    (dict(learning_rate=-0.1), ValueError, "learning_rate"),
    (dict(name=""), TypeError, "name"),
    (dict(jit_compile="auto"), TypeError, "jit_compile"),
    (dict(skip_nonfinite_steps="yes"), TypeError, "skip_nonfinite_steps"),
    (dict(momentum=0.9), TypeError, "momentum"),
    (dict(decay=0.1), TypeError, "decay"),
]


@pytest.mark.parametrize(
    "kwargs,error,text", _BAD_CONSTRUCTOR_ARGS,
    ids=[",".join(f"{k}={v!r}" for k, v in a[0].items())
         for a in _BAD_CONSTRUCTOR_ARGS])
def test_bad_constructor_argument(kwargs, error, text):
  with pytest.raises(error) as info:
    tf_adadelta.Adadelta(**kwargs)
  assert text in str(info.value)


@pytest.mark.parametrize("dtype", [tf.int32, tf.int64])
def test_integer_learning_rate_variable_is_rejected(dtype):
  with pytest.raises(TypeError, match="learning_rate"):
    tf_adadelta.Adadelta(learning_rate=tf.Variable(1, dtype=dtype))


def test_keyword_only_arguments_are_not_positional():
  # 13 positional arguments as in Keras; `jit_compile` and the options after
  # it are keyword-only.
  args = [0.001, 0.95, 1e-7, None, None, None, None, False, 0.99, None, None,
          None, "adadelta"]
  tf_adadelta.Adadelta(*args)
  with pytest.raises(TypeError):
    tf_adadelta.Adadelta(*args, True)  # pylint: disable=too-many-function-args


def test_boundary_values_are_accepted_and_match_keras():
  # The closed ends of every range are valid, and give Keras's numbers.
  kwargs = dict(learning_rate=1.0, rho=0.0, weight_decay=0.0, use_ema=True,
                ema_momentum=1.0, ema_overwrite_frequency=1,
                gradient_accumulation_steps=2)
  ours = tf_adadelta.Adadelta(**kwargs)
  theirs = keras.optimizers.Adadelta(**kwargs)
  v_ours = tf.Variable([1.0, -2.0, 3.0])
  v_theirs = tf.Variable([1.0, -2.0, 3.0])
  for step in range(4):
    grad = tf.constant([0.5, -1.0, 2.0]) * (step + 1)
    ours.apply_gradients([(grad, v_ours)])
    theirs.apply_gradients([(grad, v_theirs)])
  np.testing.assert_allclose(v_ours.numpy(), v_theirs.numpy(), rtol=1e-6)
  assert not np.allclose(v_ours.numpy(), [1.0, -2.0, 3.0])


# --- apply_gradients ---------------------------------------------------------

_OPTIMIZER_CONFIGS = {
    "plain": dict(learning_rate=1.0),
    "all_state": dict(learning_rate=1.0, weight_decay=0.1, clipnorm=1.0,
                      use_ema=True, ema_overwrite_frequency=3,
                      gradient_accumulation_steps=2,
                      skip_nonfinite_steps=True),
}


def _model():
  return [tf.Variable([1.0, -2.0, 3.0], name="dense_w"),
          tf.Variable([[0.5, 0.25], [-1.0, 2.0]], name="dense_b")]


def _grads(step=0):
  scale = 1.0 + step
  return [tf.constant([0.1, -0.2, 0.3]) * scale,
          tf.constant([[1.0, -1.0], [0.5, 0.0]]) * scale]


def _optimizer(config, steps_taken, variables, face=tf_adadelta.Adadelta):
  opt = face(**_OPTIMIZER_CONFIGS[config])
  for step in range(steps_taken):
    opt.apply_gradients(zip(_grads(step), variables))
  return opt


def _call(mode, opt, pairs_fn):
  """Calls `apply_gradients` eagerly or inside a fresh `tf.function`."""
  if mode == "eager":
    return opt.apply_gradients(pairs_fn())
  return tf.function(lambda: opt.apply_gradients(pairs_fn()))()


_INT_VARIABLE = tf.Variable([1, 2, 3], name="int_counter")

_BAD_CALLS = {
    # name: (pairs built from the model variables, error, text in message)
    "shape_mismatch": (
        lambda w, b: [(_grads()[0], w), (tf.ones([2, 3]), b)],
        ValueError, "dense_b"),
    "rank_mismatch": (
        lambda w, b: [(_grads()[0], w), (tf.ones([4]), b)],
        ValueError, "dense_b"),
    "numpy_shape_mismatch": (
        lambda w, b: [(np.ones([3], np.float32), w),
                      (np.ones([2], np.float32), b)],
        ValueError, "dense_b"),
    "indexed_slices_bad_rows": (
        lambda w, b: [(_grads()[0], w),
                      (tf.IndexedSlices(tf.ones([1, 3]), tf.constant([0]),
                                        tf.constant([2, 2])), b)],
        ValueError, "dense_b"),
    "all_none": (lambda w, b: [(None, w), (None, b)], ValueError,
                 "No gradients"),
    "integer_variable": (
        lambda w, b: [(_grads()[0], w), (tf.ones([3]), _INT_VARIABLE)],
        TypeError, "int_counter"),
    "plain_tensor_as_variable": (
        lambda w, b: [(_grads()[0], w), (tf.ones([3]), tf.ones([3]))],
        TypeError, "tf.Variable"),
    "numpy_array_as_variable": (
        lambda w, b: [(_grads()[0], w), (tf.ones([3]), np.ones([3]))],
        TypeError, "ndarray"),
    "same_variable_twice": (
        lambda w, b: [(_grads()[0], w), (_grads()[1], b), (_grads()[0], w)],
        ValueError, "dense_w"),
    "integer_gradient": (
        lambda w, b: [(_grads()[0], w), (tf.ones([2, 2], tf.int32), b)],
        TypeError, "dense_b"),
    "string_gradient": (
        lambda w, b: [(_grads()[0], w), ("gradient", b)],
        TypeError, "dense_b"),
    "not_a_pair": (
        lambda w, b: [(_grads()[0], w), (b,)],
        TypeError, "grads_and_vars"),
}


_FACES = {"module": tf_adadelta.Adadelta, "keras": tf_adadelta.keras.Adadelta}


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("steps_taken", [0, 3])
@pytest.mark.parametrize("config", sorted(_OPTIMIZER_CONFIGS))
@pytest.mark.parametrize("case", sorted(_BAD_CALLS))
@pytest.mark.parametrize("face", sorted(_FACES))
def test_bad_call_raises_and_changes_nothing(face, case, config, steps_taken,
                                             mode):
  pairs_fn, error, text = _BAD_CALLS[case]
  variables = _model()
  opt = _optimizer(config, steps_taken, variables, _FACES[face])
  before = state_snapshot.snapshot(opt, variables + [_INT_VARIABLE])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "all_none" also names the variables.
    with pytest.raises(error) as info:
      _call(mode, opt, lambda: pairs_fn(*variables))
  assert text in str(info.value)
  state_snapshot.assert_unchanged(before, opt, variables + [_INT_VARIABLE])


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_next_step_after_a_rejected_call_matches_keras(mode):
  # A rejected first call must not leave half-built state behind.
  config = _OPTIMIZER_CONFIGS["all_state"]
  variables = _model()
  opt = tf_adadelta.Adadelta(**config)
  with pytest.raises(ValueError, match="dense_b"):
    _call(mode, opt, lambda: [(_grads()[0], variables[0]),
                              (tf.ones([5]), variables[1])])
  reference = _model()
  keras_opt = keras.optimizers.Adadelta(
      **{k: v for k, v in config.items() if k != "skip_nonfinite_steps"})
  for step in range(4):
    _call(mode, opt, lambda s=step: list(zip(_grads(s), variables)))
    keras_opt.apply_gradients(zip(_grads(step), reference))
  for ours, theirs in zip(variables, reference):
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)
  assert opt.iterations.numpy() == keras_opt.iterations.numpy() == 2


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_some_none_gradients_are_skipped_with_a_warning(mode):
  config = dict(learning_rate=1.0, weight_decay=0.1, clipnorm=0.5,
                use_ema=True, ema_momentum=0.9)
  variables = _model()
  reference = _model()
  opt = tf_adadelta.Adadelta(**config)
  keras_opt = keras.optimizers.Adadelta(**config)
  for step in range(3):
    with pytest.warns(UserWarning, match="dense_b"):
      _call(mode, opt, lambda s=step: [(_grads(s)[0], variables[0]),
                                       (None, variables[1])])
    with pytest.warns(UserWarning):
      keras_opt.apply_gradients([(_grads(step)[0], reference[0]),
                                 (None, reference[1])])
    np.testing.assert_array_equal(variables[1].numpy(), reference[1].numpy())
    # Changed outside the optimizer: its average follows, as in Keras.
    variables[1].assign_add(tf.ones([2, 2]))
    reference[1].assign_add(tf.ones([2, 2]))
  np.testing.assert_allclose(variables[0].numpy(), reference[0].numpy(),
                             rtol=1e-6)
  assert not np.allclose(variables[0].numpy(), _model()[0].numpy())
  assert opt.iterations.numpy() == 3
  for index, var in enumerate(variables):
    np.testing.assert_allclose(
        opt.get_slot(var, "average").numpy(),
        keras_opt._model_variables_moving_average[index].numpy(),  # pylint: disable=protected-access
        rtol=1e-6)
  opt.finalize_variable_values(variables)
  keras_opt.finalize_variable_values(reference)
  for ours, theirs in zip(variables, reference):
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_numpy_gradients_match_keras(mode, dtype):
  config = dict(learning_rate=1.0, rho=0.9, global_clipnorm=1.0)
  variables = _model()
  reference = _model()
  opt = tf_adadelta.Adadelta(**config)
  keras_opt = keras.optimizers.Adadelta(**config)
  for step in range(3):
    grads = [np.asarray(g.numpy(), dtype) for g in _grads(step)]
    _call(mode, opt, lambda g=grads: list(zip(g, variables)))
    keras_opt.apply_gradients(zip(_grads(step), reference))
  for ours, theirs in zip(variables, reference):
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6)
  assert not np.allclose(variables[0].numpy(), _model()[0].numpy())


def test_nested_list_gradient_is_accepted():
  variables = _model()
  reference = _model()
  opt = tf_adadelta.Adadelta(learning_rate=1.0)
  keras_opt = keras.optimizers.Adadelta(learning_rate=1.0)
  opt.apply_gradients([([0.1, -0.2, 0.3], variables[0])])
  keras_opt.apply_gradients([(tf.constant([0.1, -0.2, 0.3]), reference[0])])
  np.testing.assert_allclose(variables[0].numpy(), reference[0].numpy(),
                             rtol=1e-6)


def test_build_rejects_non_float_variables_and_changes_nothing():
  variables = _model()
  opt = tf_adadelta.Adadelta()
  before = state_snapshot.snapshot(opt, variables)
  with pytest.raises(TypeError, match="int_counter"):
    opt.build([variables[0], _INT_VARIABLE])
  state_snapshot.assert_unchanged(before, opt, variables)


@pytest.mark.parametrize("jit_compile", [False, True], ids=["function", "xla"])
@pytest.mark.parametrize("config", sorted(_OPTIMIZER_CONFIGS))
def test_shape_mismatch_found_only_when_run_changes_nothing(config,
                                                            jit_compile):
  # With `None` in the input signature the shapes are unknown while tracing;
  # the mismatch is caught when the step runs, still before any update.
  variables = _model()
  opt = _optimizer(config, 3, variables)
  spec = tf.TensorSpec(None, tf.float32)

  @tf.function(input_signature=[spec, spec], jit_compile=jit_compile)
  def step(grad_w, grad_b):
    opt.apply_gradients([(grad_w, variables[0]), (grad_b, variables[1])])

  before = state_snapshot.snapshot(opt, variables)
  with pytest.raises(tf.errors.InvalidArgumentError) as info:
    step(_grads()[0], tf.ones([4]))
  if not jit_compile:
    assert "dense_b" in str(info.value)
  state_snapshot.assert_unchanged(before, opt, variables)
  # The same function still takes good gradients.
  step(*_grads())
  assert not np.array_equal(variables[1].numpy(), before[-1][1])


def test_sparse_rows_mismatch_found_only_when_run_changes_nothing():
  variables = _model()
  opt = _optimizer("all_state", 2, variables)

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
  def step(rows):
    grad = tf.IndexedSlices(rows, tf.constant([1]), tf.constant([2, 2]))
    opt.apply_gradients([(_grads()[0], variables[0]), (grad, variables[1])])

  before = state_snapshot.snapshot(opt, variables)
  with pytest.raises(tf.errors.InvalidArgumentError, match="dense_b"):
    step(tf.ones([1, 3]))
  state_snapshot.assert_unchanged(before, opt, variables)
  step(tf.ones([1, 2]))
  assert opt.micro_iterations.numpy() == 3


# --- Both faces: assigning the rate, variables after build -------------------


@pytest.mark.parametrize("value,error", [("fast", TypeError),
                                         (-0.5, ValueError),
                                         (float("nan"), ValueError),
                                         (None, TypeError)])
@pytest.mark.parametrize("face", sorted(_FACES))
def test_assigning_a_bad_learning_rate_raises_and_keeps_the_rate(face, value,
                                                                 error):
  opt = _FACES[face](learning_rate=0.5)
  with pytest.raises(error, match="learning_rate"):
    opt.learning_rate = value
  assert float(np.asarray(opt.learning_rate)) == 0.5
  opt.learning_rate = np.float32(0.25)  # As Keras's callbacks assign it.
  assert float(np.asarray(opt.learning_rate)) == 0.25


def test_keras_face_refuses_a_variable_it_was_not_built_with():
  """As Keras's optimizers: its state is saved by position, in build order."""
  variables = _model()
  opt = _optimizer("all_state", 3, variables, tf_adadelta.keras.Adadelta)
  late = tf.Variable([1.0, 1.0], name="late_w")
  before = state_snapshot.snapshot(opt, variables + [late])
  with pytest.raises(ValueError, match="Unknown variable 'late_w'"):
    opt.apply_gradients(zip(_grads() + [tf.ones([2])], variables + [late]))
  state_snapshot.assert_unchanged(before, opt, variables + [late])
  # The module face takes new variables at any time, with Keras's numbers.
  module_opt = _optimizer("plain", 3, variables)
  module_opt.apply_gradients([(tf.ones([2]), late)])
  expected = tf.Variable([1.0, 1.0])
  keras.optimizers.Adadelta(learning_rate=1.0).apply_gradients(
      [(tf.ones([2]), expected)])
  np.testing.assert_allclose(late.numpy(), expected.numpy(), rtol=1e-6)


def test_keras_face_built_again_with_its_variables_changes_nothing():
  """`LossScaleOptimizer.build` builds an inner optimizer that may be built."""
  variables = _model()
  opt = _optimizer("all_state", 3, variables, tf_adadelta.keras.Adadelta)
  before = state_snapshot.snapshot(opt, variables)
  opt.build(variables)
  state_snapshot.assert_unchanged(before, opt, variables)
  wrapped = keras.optimizers.LossScaleOptimizer(opt)
  wrapped.apply_gradients(zip(_grads(), variables))
  assert int(opt._iterations.numpy()) == 4  # pylint: disable=protected-access
