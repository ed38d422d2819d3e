"""`tf.train.Checkpoint`: resuming equals never stopping.

Reference: the same training run without the break. Slots are matched to
variables by identity (the slot protocol): the resumed run lists its variables
in another order, two of them share a name and a shape, and the restore
happens before any slot exists.
"""

import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import distributed_model as dm
from tests import variable_kinds

CONFIGS = {
    "plain": dict(learning_rate=0.8),
    "ema": dict(learning_rate=0.6, use_ema=True, ema_momentum=0.9,
                ema_overwrite_frequency=4),
    "accumulation_ema": dict(learning_rate=0.9, gradient_accumulation_steps=3,
                             use_ema=True, ema_momentum=0.8),
}


class Model(tf.Module):
  """Two variables with the same name and shape, and a third one.

  Args:
    kind: `tf.Variable`s or Keras variables (`variable_kinds.KINDS`).
  """

  def __init__(self, kind=variable_kinds.TF):
    super().__init__()
    self.first = variable_kinds.make(kind, [[0.5, -1.0], [2.0, 0.3]], "kernel")
    self.second = variable_kinds.make(kind, [[-0.7, 1.2], [0.1, 0.9]],
                                      "kernel")
    self.bias = variable_kinds.make(kind, [0.2, -0.4], "bias")

  def ordered(self, reverse=False):
    variables = [self.first, self.second, self.bias]
    return variables[::-1] if reverse else variables


def _grads(variables, step):
  scale = 1.0 + tf.cast(step, tf.float32)
  with tf.GradientTape() as tape:
    loss = tf.add_n([tf.reduce_sum(tf.sin(v * scale) * v + 0.2 * v * v) *
                     (i + 1.0) for i, v in enumerate(variables)])
  return tape.gradient(loss, variables)


def _step_fn(model, optimizer, reverse, compiled):
  def step(step_number):
    variables = model.ordered()
    grads = _grads(variables, step_number)
    pairs = list(zip(grads, variables))
    optimizer.apply_gradients(pairs[::-1] if reverse else pairs)
  return tf.function(step) if compiled else step


def _state(model, optimizer):
  values = [v.numpy() for v in model.ordered()]
  for var in model.ordered():
    values += [optimizer.get_slot(var, name).numpy()
               for name in optimizer.get_slot_names()]
  return values


@pytest.mark.parametrize("kind", variable_kinds.KINDS)
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_resume_equals_uninterrupted(tmp_path, name, compiled, kind):
  before, after = 5, 4
  model = Model(kind)
  optimizer = tf_adadelta.Adadelta(**CONFIGS[name])
  step = _step_fn(model, optimizer, reverse=False, compiled=compiled)
  for i in range(before):
    step(tf.constant(i))
  optimizer.learning_rate = 0.55  # The restored rate must be this one.
  manager = tf.train.CheckpointManager(
      tf.train.Checkpoint(model=model, optimizer=optimizer), str(tmp_path),
      max_to_keep=2)
  manager.save()
  for i in range(before, before + after):
    step(tf.constant(i))
  expected = _state(model, optimizer)

  resumed_model = Model(kind)
  resumed = tf_adadelta.Adadelta(**CONFIGS[name])
  status = tf.train.Checkpoint(model=resumed_model, optimizer=resumed).restore(
      manager.latest_checkpoint)
  assert not resumed.built
  resumed_step = _step_fn(resumed_model, resumed, reverse=True,
                          compiled=compiled)
  resumed_step(tf.constant(before))
  status.assert_consumed()
  for i in range(before + 1, before + after):
    resumed_step(tf.constant(i))

  for actual, wanted in zip(_state(resumed_model, resumed), expected):
    np.testing.assert_allclose(actual, wanted, rtol=1e-6, atol=1e-7)
  assert resumed.iterations.numpy() == optimizer.iterations.numpy()
  if "gradient_accumulation_steps" in CONFIGS[name]:
    assert resumed.micro_iterations.numpy() == before + after
  assert resumed.learning_rate.numpy() == pytest.approx(0.55)


@pytest.mark.parametrize("kind", variable_kinds.KINDS)
def test_restore_into_built_optimizer_matches_by_identity(tmp_path, kind):
  model = Model(kind)
  optimizer = tf_adadelta.Adadelta(learning_rate=1.0)
  step = _step_fn(model, optimizer, reverse=False, compiled=False)
  for i in range(3):
    step(tf.constant(i))
  path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(
      str(tmp_path / "ckpt"))
  saved = _state(model, optimizer)

  # Built on the variables in the other order, then trained elsewhere.
  other_model = Model(kind)
  other = tf_adadelta.Adadelta(learning_rate=1.0)
  other_step = _step_fn(other_model, other, reverse=True, compiled=False)
  for i in range(2):
    other_step(tf.constant(10 + i))
  tf.train.Checkpoint(model=other_model, optimizer=other).restore(
      path).assert_consumed()
  for actual, wanted in zip(_state(other_model, other), saved):
    np.testing.assert_array_equal(actual, wanted)
  assert other.iterations.numpy() == 3


@pytest.mark.parametrize("kind", variable_kinds.KINDS)
def test_checkpoint_records_slots_as_slot_references(tmp_path, kind):
  model = Model(kind)
  optimizer = tf_adadelta.Adadelta(use_ema=True)
  _step_fn(model, optimizer, reverse=False, compiled=False)(tf.constant(0))
  path = tf.train.Checkpoint(model=model, optimizer=optimizer).save(
      str(tmp_path / "ckpt"))
  graph = _object_graph(path)
  references = [(ref.slot_name, ref.original_variable_node_id)
                for node in graph.nodes for ref in node.slot_variables]
  assert sorted(name for name, _ in references) == sorted(
      ["accumulated_grad", "accumulated_delta_var", "average"] * 3)
  assert len(set(node for _, node in references)) == 3


def _object_graph(path):
  from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-import-not-at-top
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(
      tf.train.load_checkpoint(path).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
  return graph


def _values(optimizer, variables):
  return [np.array(v.numpy(), copy=True)
          for v in list(optimizer.variables) + list(variables)]


def _save_small(tmp_path):
  variable = tf.Variable([1.0, 2.0], name="weights")
  other = tf.Variable([3.0], name="other")
  optimizer = tf_adadelta.Adadelta(learning_rate=0.5)
  optimizer.apply_gradients([(tf.constant([0.1, 0.2]), variable),
                             (tf.constant([0.3]), other)])
  return tf.train.Checkpoint(other=other, weights=variable,
                             optimizer=optimizer).save(str(tmp_path / "ckpt"))


def test_shape_mismatch_names_the_variable_and_changes_nothing(tmp_path):
  path = _save_small(tmp_path)
  variable = tf.Variable([1.0, 2.0, 3.0], name="weights")
  other = tf.Variable([5.0], name="other")
  optimizer = tf_adadelta.Adadelta(learning_rate=0.1)
  optimizer.apply_gradients([(tf.constant([0.4, 0.5, 0.6]), variable),
                             (tf.constant([0.7]), other)])
  before = _values(optimizer, [variable, other])
  with pytest.raises(ValueError, match=r"slot 'accumulated_(grad|delta_var)' "
                     r"of variable 'weights:0'.*\(2,\).*\(3,\)"):
    tf.train.Checkpoint(other=other, weights=variable,
                        optimizer=optimizer).restore(path)
  for old, new in zip(before, _values(optimizer, [variable, other])):
    np.testing.assert_array_equal(new, old)


def test_shape_mismatch_before_slots_exist(tmp_path):
  path = _save_small(tmp_path)
  variable = tf.Variable([1.0, 2.0, 3.0], name="weights")
  other = tf.Variable([5.0], name="other")
  optimizer = tf_adadelta.Adadelta(learning_rate=0.1)
  with pytest.raises(ValueError, match=r"variable 'weights:0'.*\(2,\).*\(3,\)"):
    tf.train.Checkpoint(other=other, weights=variable,
                        optimizer=optimizer).restore(path)
  assert not optimizer.built
  np.testing.assert_array_equal(other.numpy(), [5.0])
  assert optimizer.learning_rate.numpy() == pytest.approx(0.1)


# --- Sharded variables (as `ParameterServerStrategy` makes them) -------------
# `tests/test_parameter_server.py` runs the same restores on parameter servers.

SHARDINGS = {
    "one_variable": None,
    "same": {"kernel": [2, 2], "table": [3, 3], "bias": [1, 1]},
    # The table is looked up "div"-partitioned, so its shards stay even.
    "other": {"kernel": [1, 3], "table": [2, 2, 2], "bias": [2]},
}


def _sharded_variables(sizes, zeros=False):
  """`dm`'s variables, each a `ShardedVariable` of `sizes[name]` rows."""
  variables = []
  for name, value in dm.initial_values().items():
    value = np.zeros_like(value) if zeros else value
    if sizes is None:
      variables.append(tf.Variable(value, name=name))
      continue
    shards, row = [], 0
    for i, size in enumerate(sizes[name]):
      shards.append(tf.Variable(value[row:row + size], name=f"{name}/part_{i}"))
      row += size
    variables.append(tf.__internal__.distribute.ShardedVariable(shards,
                                                                name=name))
  return variables


def _model_checkpoint(variables, optimizer):
  return tf.train.Checkpoint(
      model=tf.train.Checkpoint(**{f"v{i}": v for i, v in enumerate(variables)}),
      optimizer=optimizer)


def _train_sharded_and_save(tmp_path, steps, setting="combined"):
  variables = _sharded_variables(SHARDINGS["same"])
  optimizer = dm.make_optimizer(setting)
  for _ in range(steps):
    dm.step(optimizer, variables, *dm.data())
  path = _model_checkpoint(variables, optimizer).write(str(tmp_path / "ckpt"))
  return variables, optimizer, path


def test_sharded_slot_is_the_shards_slots_on_the_container_node(tmp_path):
  variables, optimizer, path = _train_sharded_and_save(tmp_path, 1)
  table = variables[1]
  for name in optimizer.get_slot_names():
    slot = optimizer.get_slot(table, name)
    assert isinstance(slot, tf.__internal__.distribute.ShardedVariable)
    assert slot is optimizer.get_slot(table, name)
    assert [s.shape.as_list() for s in slot.variables] == [[3, 2], [3, 2]]
    for shard, shard_slot in zip(table.variables, slot.variables):
      assert shard_slot is optimizer.get_slot(shard, name)
  # One reference per sharded variable and slot, none per shard.
  graph = _object_graph(path)
  references = [(ref.slot_name, ref.original_variable_node_id)
                for node in graph.nodes for ref in node.slot_variables]
  assert len(references) == 3 * len(optimizer.get_slot_names())
  assert len(set(node for _, node in references)) == 3
  shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
  assert shapes["model/v1/.OPTIMIZER_SLOT/optimizer/accumulated_grad/"
                ".ATTRIBUTES/VARIABLE_VALUE"] == [6, 2]


@pytest.mark.parametrize("build_first", [False, True],
                         ids=["restore_first", "build_first"])
@pytest.mark.parametrize("sharding", sorted(SHARDINGS))
def test_sharded_checkpoint_resumes_on_any_sharding(tmp_path, sharding,
                                                    build_first):
  """Saved sharded, resumed on one variable or another sharding."""
  before, after = 3, 2
  variables, optimizer, path = _train_sharded_and_save(tmp_path, before)
  for _ in range(after):
    dm.step(optimizer, variables, *dm.data())
  expected = dm.state(variables, optimizer)

  resumed_variables = _sharded_variables(SHARDINGS[sharding], zeros=True)
  resumed = dm.make_optimizer("combined")
  if build_first:
    resumed.build(dm.trainable(resumed_variables))
  status = _model_checkpoint(resumed_variables, resumed).read(path)
  for _ in range(after):
    dm.step(resumed, resumed_variables, *dm.data())
  status.assert_consumed()
  actual = dm.state(resumed_variables, resumed)
  for key, value in expected.items():
    np.testing.assert_allclose(actual[key], value, rtol=1e-6, atol=1e-7,
                               err_msg=key)


def test_one_device_checkpoint_resumes_sharded(tmp_path):
  variables, optimizer = dm.train_one_device(
      lambda: dm.make_optimizer("combined"), steps=3)
  path = _model_checkpoint(variables, optimizer).write(str(tmp_path / "ckpt"))
  resumed_variables = _sharded_variables(SHARDINGS["other"], zeros=True)
  resumed = dm.make_optimizer("combined")
  _model_checkpoint(resumed_variables, resumed).read(path)
  resumed.build(dm.trainable(resumed_variables))
  expected = dm.state(variables, optimizer)
  actual = dm.state(resumed_variables, resumed)
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_sharded_restore_between_the_shards_slots(tmp_path):
  """Some shards have slots when the restore comes, the others get them later.

  The saved value waits until every shard has the slot, then restores all of
  them, the earlier ones included.
  """
  variables, optimizer, path = _train_sharded_and_save(tmp_path, 3)
  resumed_variables = _sharded_variables(SHARDINGS["same"], zeros=True)
  resumed = dm.make_optimizer("combined")
  shards = dm.trainable(resumed_variables)
  resumed.build(shards[::2])
  status = _model_checkpoint(resumed_variables, resumed).read(path)
  resumed.build(shards[1::2])
  status.assert_consumed()
  expected = dm.state(variables, optimizer)
  actual = dm.state(resumed_variables, resumed)
  for key, value in expected.items():
    np.testing.assert_array_equal(actual[key], value, err_msg=key)


def test_sharded_slot_shape_mismatch_names_the_variable(tmp_path):
  _, _, path = _train_sharded_and_save(tmp_path, 1)
  variables = _sharded_variables(SHARDINGS["same"], zeros=True)
  # A table of 4 rows where the saved one has 6.
  variables[1] = tf.__internal__.distribute.ShardedVariable(
      [tf.Variable(tf.zeros([2, 2])) for _ in range(2)], name="table")
  optimizer = dm.make_optimizer("combined")
  with pytest.raises(ValueError, match=r"variable 'table'.*\(6, 2\).*\(4, 2\)"):
    _model_checkpoint(variables, optimizer).read(path)
  assert not optimizer.built
