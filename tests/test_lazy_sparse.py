"""`sparse_updates="lazy"` against TensorFlow's `ResourceSparseApplyAdadelta`.

The reference is TensorFlow 1's semantics, run on the fused CPU kernel: the
duplicate indices of a step are summed first (as TensorFlow 1's optimizer did
before calling the kernel), weight decay multiplies the touched rows, and rows
absent from the gradient keep their values and accumulators bit for bit.
"""

import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import keras_reference as ref
from tests import variable_kinds

ROWS, COLS = 12, 3
# Per step: indices with duplicates; rows 0, 6, 9 and 11 are never touched.
STEP_INDICES = [[1, 4, 1, 7], [4, 4, 2], [10, 1, 8, 3, 5], [7, 7, 7]]
UNTOUCHED = [0, 6, 9, 11]


def _table():
  return np.random.RandomState(0).randn(ROWS, COLS).astype(np.float32)


def _step_values(step, count):
  rng = np.random.RandomState(100 + step)
  return (rng.randn(count, COLS) * (step + 1)).astype(np.float32)


def _reference(steps, lr=1.0, rho=0.95, epsilon=1e-7, weight_decay=None,
               global_clipnorm=None, dtype=tf.float32):
  """The fused kernel on deduplicated gradients; returns var and both slots.

  On the CPU: TensorFlow has this kernel for the CPU only.
  """
  with tf.device("/CPU:0"):
    return _reference_on_cpu(steps, lr, rho, epsilon, weight_decay,
                             global_clipnorm, dtype)


def _reference_on_cpu(steps, lr, rho, epsilon, weight_decay, global_clipnorm,
                      dtype):
  var = tf.Variable(tf.cast(_table(), dtype))
  accum = tf.Variable(tf.zeros([ROWS, COLS], dtype))
  accum_update = tf.Variable(tf.zeros([ROWS, COLS], dtype))
  for step in range(steps):
    indices = np.array(STEP_INDICES[step])
    values = _step_values(step, len(indices)).astype(dtype.as_numpy_dtype)
    if global_clipnorm is not None:
      # Keras's clip of a sparse gradient takes the norm of its values.
      norm = np.sqrt(np.sum(values.astype(np.float64) ** 2))
      values = values * np.float32(min(1.0, global_clipnorm / norm))
    unique = np.unique(indices)
    summed = np.stack([values[indices == i].sum(axis=0) for i in unique])
    if weight_decay is not None:
      rows = tf.gather(var, unique)
      # As in Keras's (and the dense) decay: the rate is cast from float32.
      decay = tf.cast(tf.constant(weight_decay), dtype)
      var.scatter_update(tf.IndexedSlices(rows - rows * decay * lr, unique))
    tf.raw_ops.ResourceSparseApplyAdadelta(
        var=var.handle, accum=accum.handle, accum_update=accum_update.handle,
        lr=tf.constant(lr, dtype), rho=tf.constant(rho, dtype),
        epsilon=tf.constant(epsilon, dtype),
        grad=tf.constant(summed, dtype), indices=tf.constant(unique))
  return var.numpy(), accum.numpy(), accum_update.numpy()


def _train_lazy(mode, steps, index_dtype=tf.int32, dtype=tf.float32,
                kind=variable_kinds.TF, **kwargs):
  var = variable_kinds.make(kind, tf.cast(_table(), dtype), "table")
  optimizer = tf_adadelta.Adadelta(learning_rate=1.0, sparse_updates="lazy",
                                   **kwargs)

  def step_fn(values, indices):
    grad = tf.IndexedSlices(values, indices, tf.constant([ROWS, COLS]))
    optimizer.apply_gradients([(grad, var)])

  if mode != "eager":
    step_fn = tf.function(step_fn, jit_compile=(mode == "xla"))
  for step in range(steps):
    indices = STEP_INDICES[step]
    step_fn(tf.constant(_step_values(step, len(indices)), dtype),
            tf.constant(indices, index_dtype))
  return (var.numpy(), optimizer.get_slot(var, "accumulated_grad").numpy(),
          optimizer.get_slot(var, "accumulated_delta_var").numpy())


def _assert_matches(actual, expected):
  for a, e, name in zip(actual, expected, ["var", "accumulated_grad",
                                           "accumulated_delta_var"]):
    np.testing.assert_allclose(a, e, rtol=2e-6, atol=1e-7, err_msg=name)


CONFIGS = {
    "plain": {},
    "weight_decay": dict(weight_decay=0.1),
    "global_clipnorm": dict(global_clipnorm=1.5),
    "rho_epsilon": dict(rho=0.8, epsilon=1e-3),
}


@pytest.mark.parametrize("kind", variable_kinds.KINDS)
@pytest.mark.parametrize("mode", ref.MODES)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_matches_fused_sparse_kernel(config, mode, kind):
  kwargs = CONFIGS[config]
  steps = len(STEP_INDICES)
  actual = _train_lazy(mode, steps, kind=kind, **kwargs)
  _assert_matches(actual, _reference(steps, **kwargs))
  # Rows outside every gradient: untouched values, zero accumulators.
  table = _table()
  np.testing.assert_array_equal(actual[0][UNTOUCHED], table[UNTOUCHED])
  for slot in actual[1:]:
    np.testing.assert_array_equal(slot[UNTOUCHED], 0.0)
  assert np.all(actual[1][[1, 4, 7]] > 0)


# Half types: the kernel rounds its intermediates differently, which moves
# small accumulator entries by a few ulps of the values around them.
@pytest.mark.parametrize("dtype,rtol,atol", [(tf.float16, 2e-2, 1e-3),
                                             (tf.bfloat16, 5e-2, 1e-2),
                                             (tf.float64, 1e-12, 1e-14)])
@pytest.mark.parametrize("mode", ["function", "xla"])
def test_dtypes_match_fused_sparse_kernel(dtype, rtol, atol, mode):
  kwargs = dict(weight_decay=0.1, epsilon=1e-3)
  actual = _train_lazy(mode, len(STEP_INDICES), dtype=dtype, **kwargs)
  expected = _reference(len(STEP_INDICES), dtype=dtype, **kwargs)
  for a, e in zip(actual, expected):
    assert a.dtype == e.dtype == dtype.as_numpy_dtype
    np.testing.assert_allclose(np.float64(a), np.float64(e), rtol=rtol,
                               atol=atol)
  np.testing.assert_array_equal(np.float64(actual[0][UNTOUCHED]),
                                np.float64(tf.cast(_table(), dtype))[UNTOUCHED])


@pytest.mark.parametrize("index_dtype", [tf.int32, tf.int64])
def test_index_dtypes(index_dtype):
  _assert_matches(_train_lazy("function", 2, index_dtype=index_dtype),
                  _reference(2))


def test_differs_from_keras_semantics_only_outside_the_gradient():
  """After one step from zero slots both modes agree on the touched rows."""
  def one_step(mode):
    var = tf.Variable(_table())
    optimizer = tf_adadelta.Adadelta(learning_rate=1.0, sparse_updates=mode)
    grad = tf.IndexedSlices(tf.constant(_step_values(0, 4)),
                            tf.constant(STEP_INDICES[0]))
    optimizer.apply_gradients([(grad, var)])
    optimizer.apply_gradients([(grad, var)])
    return var.numpy(), optimizer.get_slot(var, "accumulated_grad").numpy()

  lazy, keras_like = one_step("lazy"), one_step("keras")
  np.testing.assert_array_equal(lazy[1][UNTOUCHED], 0.0)
  # Keras's accumulators of the touched rows decayed once more in between.
  assert not np.allclose(lazy[1][[1, 4, 7]], keras_like[1][[1, 4, 7]])


def test_dense_gradients_are_unaffected():
  config = dict(learning_rate=1.0, weight_decay=0.1)
  expected = ref.train(tf_adadelta.Adadelta(**config), "function", 4)
  actual = ref.train(tf_adadelta.Adadelta(sparse_updates="lazy", **config),
                     "function", 4)
  for a, e in zip(actual, expected):
    np.testing.assert_array_equal(a, e)


def _full_table_outputs(sparse_updates, rows=1000, **kwargs):
  """Names of ops in one traced step whose output is as large as the table."""
  var = tf.Variable(tf.zeros([rows, 4]))
  optimizer = tf_adadelta.Adadelta(sparse_updates=sparse_updates, **kwargs)
  optimizer.build([var])

  @tf.function
  def step(values, indices):
    optimizer.apply_gradients([(tf.IndexedSlices(values, indices,
                                                 tf.constant([rows, 4])),
                                var)])

  graph = step.get_concrete_function(
      tf.TensorSpec([None, 4]), tf.TensorSpec([None], tf.int32)).graph
  large = []
  for op in graph.get_operations():
    for output in op.outputs:
      if output.shape.rank and output.shape.num_elements() == rows * 4:
        large.append(op.name)
  return large


@pytest.mark.parametrize("config", [{}, dict(weight_decay=0.1, clipnorm=1.0),
                                    dict(global_clipnorm=1.0)])
def test_lazy_step_touches_only_gradient_rows(config):
  """No tensor of the table's size: the cost follows the rows in the gradient."""
  assert _full_table_outputs("lazy", **config) == []
  # The check can fail: Keras's semantics decay every row.
  assert _full_table_outputs("keras", **config)


@pytest.mark.parametrize("value,error", [("eager", ValueError),
                                         (True, TypeError), (None, TypeError)])
def test_invalid_sparse_updates(value, error):
  with pytest.raises(error, match="sparse_updates"):
    tf_adadelta.Adadelta(sparse_updates=value)


def test_config_round_trip():
  optimizer = tf_adadelta.Adadelta(sparse_updates="lazy")
  config = optimizer.get_config()
  assert config["sparse_updates"] == "lazy"
  assert tf_adadelta.Adadelta.from_config(config).sparse_updates == "lazy"


@pytest.mark.parametrize("mode", ref.MODES)
def test_nonfinite_sparse_step_is_skipped(mode):
  var = tf.Variable(_table())
  optimizer = tf_adadelta.Adadelta(learning_rate=1.0, sparse_updates="lazy",
                                   weight_decay=0.1, skip_nonfinite_steps=True)

  def step_fn(values):
    optimizer.apply_gradients([(tf.IndexedSlices(values, tf.constant([2, 5])),
                                var)])

  if mode != "eager":
    step_fn = tf.function(step_fn, jit_compile=(mode == "xla"))
  step_fn(tf.ones([2, COLS]))
  before = [v.numpy() for v in list(optimizer.variables) + [var]]
  step_fn(tf.constant([[1.0, float("nan"), 1.0], [1.0, 1.0, 1.0]]))
  after = [v.numpy() for v in list(optimizer.variables) + [var]]
  assert int(optimizer.skipped_steps.numpy()) == 1
  for b, a in zip(before, after):
    if b.shape == ():  # the counters: only `skipped_steps` moved
      continue
    np.testing.assert_array_equal(a, b)
  assert int(optimizer.iterations.numpy()) == 1
