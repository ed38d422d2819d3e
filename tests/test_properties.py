"""Property-based tests: random shapes, dtypes and arguments against Keras;
random bad calls that must leave every piece of state as it was."""

import warnings

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import state_snapshot

# Derandomized: the same examples on every run, so a failure reproduces.
_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

_TOLERANCES = {
    tf.float16: dict(rtol=1e-2, atol=1e-2),
    tf.float32: dict(rtol=2e-5, atol=1e-6),
    tf.float64: dict(rtol=1e-10, atol=1e-12),
}

_shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


@st.composite
def _configs(draw):
  """Keyword arguments shared by both optimizers."""
  config = dict(
      learning_rate=draw(st.floats(0.01, 2.0)),
      rho=draw(st.floats(0.0, 1.0)),
      epsilon=draw(st.sampled_from([1e-7, 1e-5, 1e-3, 1e-2])),
  )
  if draw(st.booleans()):
    config["weight_decay"] = draw(st.floats(0.0, 0.2))
  clip = draw(st.sampled_from([None, "clipnorm", "clipvalue",
                               "global_clipnorm"]))
  if clip:
    config[clip] = draw(st.floats(0.1, 5.0))
  if draw(st.booleans()):
    config["use_ema"] = True
    config["ema_momentum"] = draw(st.floats(0.0, 1.0))
    config["ema_overwrite_frequency"] = draw(st.sampled_from([None, 1, 2, 3]))
  if draw(st.booleans()):
    config["loss_scale_factor"] = draw(st.sampled_from([2.0, 128.0]))
  config["gradient_accumulation_steps"] = draw(st.sampled_from([None, 2, 3]))
  return config


def _values(rng, shape, dtype, scale=1.0):
  return tf.constant(rng.uniform(-scale, scale, shape), dtype)


@_SETTINGS
@given(shapes=st.lists(_shapes, min_size=1, max_size=3),
       dtype=st.sampled_from([tf.float16, tf.float32, tf.float64]),
       config=_configs(), steps=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_random_configurations_match_keras(shapes, dtype, config, steps,
                                           seed):
  rng = np.random.RandomState(seed)
  initial = [_values(rng, shape, dtype, 2.0) for shape in shapes]
  ours = [tf.Variable(v) for v in initial]
  theirs = [tf.Variable(v) for v in initial]
  opt = tf_adadelta.Adadelta(**config)
  keras_opt = keras.optimizers.Adadelta(**config)
  for _ in range(steps):
    scale = config.get("loss_scale_factor", 1.0)
    grads = [_values(rng, shape, dtype, 1.5) * scale for shape in shapes]
    opt.apply_gradients(zip(grads, ours))
    keras_opt.apply_gradients(zip(grads, theirs))
  assert opt.iterations.numpy() == keras_opt.iterations.numpy()
  for a, b in zip(ours, theirs):
    assert a.dtype == b.dtype == dtype
    np.testing.assert_allclose(tf.cast(a, tf.float64).numpy(),
                               tf.cast(b, tf.float64).numpy(),
                               **_TOLERANCES[dtype])
  for name in ["accumulated_grad", "accumulated_delta_var"]:
    for index, var in enumerate(ours):
      slot = opt.get_slot(var, name)
      assert slot.dtype == dtype
      keras_slot = (keras_opt._accumulated_grads if name == "accumulated_grad"  # pylint: disable=protected-access
                    else keras_opt._accumulated_delta_vars)[index]  # pylint: disable=protected-access
      np.testing.assert_allclose(tf.cast(slot, tf.float64).numpy(),
                                 tf.cast(keras_slot, tf.float64).numpy(),
                                 **_TOLERANCES[dtype])


# --- Random bad calls --------------------------------------------------------


@st.composite
def _bad_calls(draw):
  """A call with one defect among good pairs: `(kind, make_pairs, error)`.

  `make_pairs(variables, good_grads)` builds the `grads_and_vars` list.
  """
  kind = draw(st.sampled_from([
      "shape", "integer_variable", "plain_tensor", "duplicate", "all_none",
      "integer_gradient", "not_a_pair"]))
  position = draw(st.integers(0, 10))
  wrong = draw(_shapes)

  def make_pairs(variables, grads):
    pairs = list(zip(grads, variables))
    at = position % len(pairs)
    grad, var = pairs[at]
    if kind == "shape":
      if tuple(wrong) == tuple(var.shape):
        shape = tuple(wrong) + (5,)
      else:
        shape = wrong
      pairs[at] = (tf.ones(shape, var.dtype), var)
    elif kind == "integer_variable":
      pairs.insert(at, (tf.ones([2]), tf.Variable([1, 2])))
    elif kind == "plain_tensor":
      pairs.insert(at, (tf.ones([2]), tf.ones([2])))
    elif kind == "duplicate":
      pairs.insert(at, (grad, var))
    elif kind == "all_none":
      pairs = [(None, v) for _, v in pairs]
    elif kind == "integer_gradient":
      pairs[at] = (tf.ones(var.shape, tf.int32), var)
    else:
      pairs.insert(at, (grad,))
    return pairs

  error = TypeError if kind in ("integer_variable", "plain_tensor",
                                "integer_gradient", "not_a_pair") else ValueError
  return kind, make_pairs, error


@_SETTINGS
@given(shapes=st.lists(_shapes, min_size=1, max_size=3),
       dtype=st.sampled_from([tf.float16, tf.bfloat16, tf.float32,
                              tf.float64]),
       config=_configs(), steps_before=st.integers(0, 3), bad=_bad_calls(),
       in_function=st.booleans(), seed=st.integers(0, 2**16))
def test_random_bad_calls_change_nothing(shapes, dtype, config, steps_before,
                                         bad, in_function, seed):
  _, make_pairs, error = bad
  rng = np.random.RandomState(seed)
  variables = [tf.Variable(_values(rng, shape, dtype)) for shape in shapes]
  opt = tf_adadelta.Adadelta(**config)
  for _ in range(steps_before):
    opt.apply_gradients(
        zip([_values(rng, s, dtype) for s in shapes], variables))
  grads = [_values(rng, s, dtype) for s in shapes]
  before = state_snapshot.snapshot(opt, variables)
  call = lambda: opt.apply_gradients(make_pairs(variables, grads))
  if in_function:
    call = tf.function(call)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(error):
      call()
  state_snapshot.assert_unchanged(before, opt, variables)


@_SETTINGS
@given(shapes=st.lists(_shapes, min_size=1, max_size=3),
       dtype=st.sampled_from([tf.float16, tf.float32, tf.float64]),
       config=_configs(), steps_before=st.integers(0, 3),
       bad_value=st.sampled_from([np.nan, np.inf, -np.inf]),
       where=st.integers(0, 1000), seed=st.integers(0, 2**16))
def test_random_nonfinite_steps_are_skipped(shapes, dtype, config,
                                            steps_before, bad_value, where,
                                            seed):
  rng = np.random.RandomState(seed)
  variables = [tf.Variable(_values(rng, shape, dtype)) for shape in shapes]
  opt = tf_adadelta.Adadelta(**config, skip_nonfinite_steps=True)
  for _ in range(steps_before):
    opt.apply_gradients(
        zip([_values(rng, s, dtype) for s in shapes], variables))
  if not steps_before:
    # A first call creates the slots, at their initial values, whether or not
    # it is skipped; compare from there.
    opt.build(variables)
  grads = [np.array(_values(rng, s, dtype).numpy()) for s in shapes]
  target = grads[where % len(grads)]
  target.reshape(-1)[where % target.size] = bad_value
  assert not all(np.all(np.isfinite(g.astype(np.float64))) for g in grads)
  before = state_snapshot.snapshot(opt, variables, exclude=[opt.skipped_steps])
  opt.apply_gradients(zip(grads, variables))
  state_snapshot.assert_unchanged(before, opt, variables,
                                  exclude=[opt.skipped_steps])
  assert opt.skipped_steps.numpy() == 1
