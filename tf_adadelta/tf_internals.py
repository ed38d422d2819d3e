"""Every TensorFlow API this library uses that is not public, in one place.

TensorFlow has no public API for some of what an optimizer must do (the
slot-variable protocol of checkpoints, sharded variables, SavedModel export
of slots). Each such use is wrapped here, named for what it is for, so a
TensorFlow release that changes one breaks one function, and
`tests/test_tf_internals.py` says which.

Beyond these names, `slots.py` uses the checkpoint-position objects that
TensorFlow passes to an optimizer's `_create_or_restore_slot_variable`
(`value_shape`, `restore_uid`, `restore`, and for SavedModel slot groups
`checkpoint.object_by_proto_id`, `checkpoint.slot_restorations`,
`create_child_position`, `object_proto.children`); the same tests exercise
them through a real restore. Keras variables need none: their public `.value`
is the `tf.Variable` they wrap.
"""

from typing import Any, Optional

import tensorflow as tf
# `SaveType`, `ShardInfo`, `Trackable` and `_SlotVariableRestoration` are not
# exported by `tf`.
from tensorflow.python.trackable import base as trackable_base  # pylint: disable=g-direct-tensorflow-import

# The base class of objects in a checkpoint's object graph; subclassed for the
# SavedModel export of slots.
Trackable = trackable_base.Trackable
# Whether `_trackable_children` is asked for a checkpoint or a SavedModel.
SaveType = trackable_base.SaveType
# The container `ParameterServerStrategy` makes for a partitioned variable.
ShardedVariable = tf.__internal__.distribute.ShardedVariable
# A variable's initial value read from a checkpoint position, for slots
# created after their values were restored (deferred restore).
CheckpointInitialValueCallable = (
    tf.__internal__.tracking.CheckpointInitialValueCallable)


def unique_id(variable) -> Any:
  """The identity TensorFlow's own optimizers key slots by (`_unique_id`)."""
  return variable._unique_id  # pylint: disable=protected-access


def distributed_container(variable) -> Optional[Any]:
  """The distributed variable whose per-replica copy `variable` is, or None.

  Inside `strategy.extended.update` a function receives one copy of a
  `MirroredVariable`; its container is the variable the user holds.
  """
  container = getattr(variable, "_distributed_container", None)
  if container is None:
    container = getattr(getattr(variable, "handle", None),
                        "_distributed_container", None)
  return container() if container is not None else None


def sharded_container(variable) -> Optional[ShardedVariable]:
  """The `ShardedVariable` that `variable` is a shard of, or None."""
  container = getattr(variable, "_sharded_container", None)
  return container() if container is not None else None


def shard_info(shape, offset) -> Any:
  """Where a shard lies in its variable, for a checkpoint slice read."""
  return trackable_base.ShardInfo(shape=shape, offset=offset)


def slot_variable_restoration(optimizer_id, slot_variable_id, slot_name):
  """A pending slot restore of a checkpoint, resolved when its variable is."""
  return trackable_base._SlotVariableRestoration(  # pylint: disable=protected-access
      optimizer_id=optimizer_id, slot_variable_id=slot_variable_id,
      slot_name=slot_name)


def mark_restored_no_earlier_than(variable, others) -> None:
  """Lets a checkpoint restore overwrite `variable` as it would `others`.

  A restore writes a value only into an object restored before it
  (`_update_uid`, set when the object was created from a checkpoint value).
  A `ShardedVariable` of slot shards made after some shards were created
  must count as old as its oldest shard.

  Args:
    variable: The new trackable (a `ShardedVariable`).
    others: The trackables it is made of.
  """
  # pylint: disable=protected-access
  for other in others:
    other._maybe_initialize_trackable()
  variable._maybe_initialize_trackable()
  variable._update_uid = min(other._update_uid for other in others)
  # pylint: enable=protected-access


def mark_matched(checkpoint, trackable) -> None:
  """Counts `trackable` as given a value by a restore that set it itself.

  `assert_consumed` fails for a Python object that no checkpoint node is
  bound to. A counter derived from a restored one (the module face's
  `iterations` from a Keras call count) has no node of its own; it is
  recorded under a key that is no node id.

  Args:
    checkpoint: The restore's checkpoint object (`position.checkpoint`).
    trackable: The object the restore set.
  """
  checkpoint.object_by_proto_id[("derived", id(trackable))] = trackable


# TensorFlow finds the optimizers whose slots a checkpoint records by the
# name of this method (`"get_slot_names" in dir(obj)`); hiding it while a
# SavedModel is written keeps slot references out of the SavedModel.
SLOT_OWNER_METHOD = "get_slot_names"
