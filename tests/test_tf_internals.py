"""The private TensorFlow APIs in `tf_adadelta/tf_internals.py` still behave as relied on.

One test per API. When a TensorFlow release changes one, its test fails
with a message naming the API, before any optimizer test fails obscurely.
The checkpoint-position protocol (what TensorFlow hands an optimizer's
`_create_or_restore_slot_variable`) is checked through a real restore.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_adadelta import tf_internals


def _fail(api, detail):
  pytest.fail(f"TensorFlow changed {api}: {detail}. Update "
              "tf_adadelta/tf_internals.py.")


def test_trackable_and_save_type():
  if not hasattr(tf_internals.Trackable, "_trackable_children"):
    _fail("Trackable", "it has no `_trackable_children`")
  for name in ("CHECKPOINT", "SAVEDMODEL"):
    if not hasattr(tf_internals.SaveType, name):
      _fail("SaveType", f"it has no member {name}")

  class Holder(tf_internals.Trackable):

    def __init__(self):
      self.seen = []
      self.value = tf.Variable(3.0)

    def _trackable_children(self, save_type=tf_internals.SaveType.CHECKPOINT,
                            **kwargs):
      self.seen.append(save_type)
      return {"value": self.value}

  holder = Holder()
  path = tf.train.Checkpoint(holder=holder).save("/tmp/tf_internals_ckpt/c")
  if tf_internals.SaveType.CHECKPOINT not in holder.seen:
    _fail("SaveType", "a checkpoint save did not ask for CHECKPOINT children")
  reader = tf.train.load_checkpoint(path)
  names = [n for n, _ in tf.train.list_variables(path)]
  assert any(n.startswith("holder/value") for n in names), names
  assert reader.get_tensor("holder/value/.ATTRIBUTES/VARIABLE_VALUE") == 3.0


def test_unique_id_is_stable_and_distinct():
  a, b = tf.Variable(1.0), tf.Variable(1.0)
  try:
    ids = tf_internals.unique_id(a), tf_internals.unique_id(b)
  except AttributeError as e:
    _fail("Variable._unique_id", str(e))
  assert ids[0] == tf_internals.unique_id(a)
  assert ids[0] != ids[1]


def test_distributed_container_of_a_replica_copy():
  strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
  with strategy.scope():
    mirrored = tf.Variable(1.0)
  assert tf_internals.distributed_container(tf.Variable(1.0)) is None
  seen = []

  def update(copy):
    seen.append(tf_internals.distributed_container(copy))
    return copy.assign_add(1.0)

  strategy.extended.update(mirrored, update)
  # OneDeviceStrategy hands the variable itself; MirroredStrategy (see
  # test_mirrored) hands per-replica copies whose container is `mirrored`.
  assert seen and (seen[0] is None or seen[0] is mirrored), seen


def test_distributed_container_under_mirrored_strategy():
  devices = tf.config.list_logical_devices("CPU")
  strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:1]])
  with strategy.scope():
    mirrored = tf.Variable(1.0)
  seen = []

  def update(copy):
    seen.append(tf_internals.distributed_container(copy))
    return copy.assign_add(1.0)

  strategy.extended.update(mirrored, update)
  if not seen or seen[0] is not mirrored:
    _fail("_distributed_container",
          f"a replica copy's container is {seen!r}, not its MirroredVariable")


def test_sharded_variable_and_sharded_container():
  shards = [tf.Variable(np.zeros([2, 3], np.float32)),
            tf.Variable(np.ones([1, 3], np.float32))]
  sharded = tf_internals.ShardedVariable(shards)
  assert sharded.shape.as_list() == [3, 3]
  assert list(sharded.variables) == shards
  for shard in shards:
    if tf_internals.sharded_container(shard) is not sharded:
      _fail("_sharded_container", "a shard does not name its ShardedVariable")
  assert tf_internals.sharded_container(tf.Variable(1.0)) is None


def test_checkpoint_position_protocol(tmp_path):
  """What a deferred slot restore uses of TensorFlow's checkpoint positions."""

  class SlotOwner(tf.Module):
    """Saves one slot for `var` through the slot protocol of checkpoints."""

    def __init__(self, var, slot=None):
      super().__init__()
      self.var = var
      # Kept out of the object graph: the checkpoint must reach it only as
      # a slot.
      self.get_slot = lambda v, name: slot if v is var else None
      self.positions = []

    def get_slot_names(self):
      return ["s"]

    def _create_or_restore_slot_variable(self, slot_variable_position,
                                         slot_name, variable):
      self.positions.append((slot_variable_position, slot_name, variable))
      return None

  saved_slot = np.arange(8, dtype=np.float32).reshape([4, 2])
  var = tf.Variable(np.zeros([4, 2], np.float32))
  owner = SlotOwner(var, tf.Variable(saved_slot))
  # The slot protocol is written for objects with `get_slot_names`, as for
  # OptimizerV2; the checkpoint then holds a slot reference.
  path = tf.train.Checkpoint(model=tf.Module(), var=var,
                             optimizer=owner).write(str(tmp_path / "c"))
  fresh_var = tf.Variable(np.ones([4, 2], np.float32))
  fresh = SlotOwner(fresh_var)
  tf.train.Checkpoint(var=fresh_var, optimizer=fresh).read(path)
  if not fresh.positions:
    _fail("the slot-variable protocol",
          "`_create_or_restore_slot_variable` was not called on restore "
          f"(the owner is found by `{tf_internals.SLOT_OWNER_METHOD}`)")
  position, slot_name, variable = fresh.positions[0]
  assert slot_name == "s" and variable is fresh_var
  assert tf.TensorShape(position.value_shape()).as_list() == [4, 2]
  assert isinstance(position.restore_uid, int)
  initial_value = tf_internals.CheckpointInitialValueCallable(
      checkpoint_position=position)
  slot = tf.Variable(initial_value, shape=[4, 2])
  np.testing.assert_array_equal(slot.numpy(), saved_slot)
  position.restore(slot)
  np.testing.assert_array_equal(slot.numpy(), saved_slot)
  # A shard's slot reads its slice of the whole saved slot.
  info = tf_internals.shard_info(shape=[2, 2], offset=[2, 0])
  shard_slot = tf.Variable(
      functools.partial(initial_value, shape=[4, 2], shard_info=info))
  np.testing.assert_array_equal(shard_slot.numpy(), saved_slot[2:])


def test_slot_variable_restoration_fields():
  restoration = tf_internals.slot_variable_restoration(
      optimizer_id=1, slot_variable_id=2, slot_name="s")
  assert (restoration.optimizer_id, restoration.slot_variable_id,
          restoration.slot_name) == (1, 2, "s")


def test_mark_restored_no_earlier_than():
  shards = [tf.Variable([1.0]), tf.Variable([2.0])]
  sharded = tf_internals.ShardedVariable(shards)
  try:
    tf_internals.mark_restored_no_earlier_than(sharded, shards)
  except AttributeError as e:
    _fail("_maybe_initialize_trackable/_update_uid", str(e))
  assert sharded._update_uid == min(s._update_uid for s in shards)  # pylint: disable=protected-access


def test_keras_variable_wraps_a_tf_variable():
  variable = keras.Variable(np.ones([2], np.float32))
  assert isinstance(variable.value, tf.Variable)
  assert tf_internals.unique_id(variable.value) == tf_internals.unique_id(
      variable.value)
