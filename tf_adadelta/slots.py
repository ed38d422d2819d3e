"""Slot variables, keyed by the identity of the variable they belong to.

This is TensorFlow's slot-variable protocol (the one `OptimizerV2` follows):
checkpoints record each slot as an edge `(optimizer, variable, slot name)` in
the object graph, so a restore matches slots to variables by identity, never
by position or name. When a checkpoint is restored before a slot exists, the
saved value is kept and becomes the slot's initial value once the slot is
created, lazily, by the first update.

A `ShardedVariable` (`ParameterServerStrategy` with a `variable_partitioner`)
gets its slots per shard, each beside its shard. A checkpoint records a sharded
variable as one node, its container, so the container's slot is a
`ShardedVariable` of the shards' slots: its value is saved as slices of the
whole slot, which restores onto one variable or onto another sharding as the
variable itself does.
"""

import collections
import functools
import weakref
from typing import Any, Callable, Dict, List, Optional

import tensorflow as tf

from tf_adadelta import tf_internals
from tf_adadelta import variables as variables_lib

# The child under which a SavedModel holds the slots (see `SlotExport`).
EXPORTED_SLOTS = "exported_slots"
# In an exported slot group, the child that is the model variable itself.
VARIABLE_LINK = "variable"
ShardedVariable = tf_internals.ShardedVariable
# `make_slot(variable, slot_name, initial_value, name) -> slot`: how a face
# creates a slot (a `tf.Variable`, or a Keras variable wrapping one).
SlotFactory = Callable[[Any, str, Any, str], Any]


def owning_strategy(variable) -> tf.distribute.Strategy:
  """The strategy that created `variable` (the default strategy if none)."""
  strategy = getattr(variables_lib.unwrap(variable), "_distribute_strategy",
                     None)
  return strategy or tf.distribute.get_strategy()


def _sharded_key(container):
  """The key under which a `ShardedVariable`'s deferred slot values wait.

  A tuple, so it never equals a shard's key (a container's identity is its
  first shard's unless that shard's name contains "part_0").
  """
  return ("sharded", variables_lib.key(container))


def _shard_info(container, shard):
  """Where `shard` lies in `container`, for a checkpoint slice read."""
  offset = 0
  for part in container.variables:
    if part is shard:
      break
    offset += int(part.shape[0])
  return tf_internals.shard_info(
      shape=shard.shape.as_list(),
      offset=[offset] + [0] * (len(shard.shape) - 1))


def make_tf_variable(variable, slot_name: str, initial_value, name: str):
  """The default `SlotFactory`: a plain non-trainable `tf.Variable`.

  Slots are created under `tf.init_scope`, initialized eagerly, so there is
  nothing for `tf.function` to lift out of the trace; without lifting it also
  does not trace the user's step a second time because variables appeared.
  """
  del slot_name
  return tf.Variable(initial_value, name=name, dtype=variable.dtype,
                     shape=variable.shape, trainable=False,
                     experimental_enable_variable_lifting=False)


def _slot_name_prefix(variable) -> str:
  variable = variables_lib.unwrap(variable)
  name = getattr(variable, "_shared_name", None) or variable.name
  return name.split(":")[0]


def check_restorable_shape(position, slot_name: str, variable) -> None:
  """Raises a clear error before a saved slot of the wrong shape is restored.

  Args:
    position: The checkpoint position of the saved slot.
    slot_name: The slot's name.
    variable: The model variable the slot belongs to.

  Raises:
    ValueError: The saved value's shape differs from `variable`'s.
  """
  variable = variables_lib.unwrap(variable)
  saved_shape = position.value_shape()
  if saved_shape is None:
    return
  saved_shape = tf.TensorShape(saved_shape)
  if not saved_shape.is_compatible_with(variable.shape):
    raise ValueError(
        f"Cannot restore the optimizer slot '{slot_name}' of variable "
        f"'{variable.name}': the checkpoint holds shape {saved_shape}, the "
        f"variable has shape {variable.shape}. The checkpoint was written for "
        "a differently shaped model; nothing was restored.")


class SlotTable:
  """Holds the slots of every variable an optimizer has seen.

  Not a `Trackable` itself: the optimizer exposes `get_slot_names`, `get_slot`
  and `create_or_restore`, which the checkpoint machinery calls. Slots are
  what the face's `make_slot` creates (`tf.Variable`s, or Keras variables);
  the step works on the `tf.Variable`s behind them (`variables_of`).

  Args:
    make_slot: The `SlotFactory` that creates each slot.
  """

  def __init__(self, make_slot: SlotFactory = make_tf_variable):
    self._make_slot = make_slot
    self._slots: Dict[Any, Dict[str, Any]] = {}
    self._variables: List[Any] = []
    # slot name -> variable key -> checkpoint positions waiting for the slot.
    self._deferred = collections.defaultdict(
        lambda: collections.defaultdict(list))
    # Every slot, in creation order; `tf.Module.variables` collects this list.
    self.all_slots: List[Any] = []
    # `_sharded_key(container)` -> slot name -> the container's slot (its
    # shards' slots as one `ShardedVariable`), built once, so a checkpoint
    # node stays bound to one object.
    self._sharded_slots: Dict[tuple, Dict[str, ShardedVariable]] = {}

  @property
  def variables(self) -> List[Any]:
    """The variables that have slots, in the order they were first seen."""
    return list(self._variables)

  def has(self, variable) -> bool:
    return variables_lib.key(variable) in self._slots

  def get(self, variable, slot_name: str) -> Optional[Any]:
    """The slot of `variable` (a `ShardedVariable` for one), or None."""
    if isinstance(variables_lib.unwrap(variable), ShardedVariable):
      return self._sharded_slot(variables_lib.unwrap(variable), slot_name)
    return self._slots.get(variables_lib.key(variable), {}).get(slot_name)

  def get_variable(self, variable, slot_name: str) -> Optional[tf.Variable]:
    """The `tf.Variable` of a slot of `variable`, or None."""
    slot = self._slots.get(variables_lib.key(variable), {}).get(slot_name)
    return None if slot is None else variables_lib.unwrap(slot)

  def slots_of(self, variable) -> Dict[str, Any]:
    """Slot name -> each slot of `variable`, as the face created it."""
    return dict(self._slots[variables_lib.key(variable)])

  def variables_of(self, variable) -> Dict[str, tf.Variable]:
    """Slot name -> the `tf.Variable` of each slot of `variable`."""
    return {name: variables_lib.unwrap(slot) for name, slot
            in self._slots[variables_lib.key(variable)].items()}

  def _sharded_slot(self, container, slot_name: str):
    """A `ShardedVariable` of the slots of `container`'s shards.

    Args:
      container: A `ShardedVariable` of model variables.
      slot_name: The slot's name.

    Returns:
      The slot shards as one `ShardedVariable` (checkpoints save it as slices
      of the whole slot), or None while some shard has no such slot.
    """
    shard_slots = [self.get_variable(shard, slot_name)
                   for shard in container.variables]
    if any(slot is None for slot in shard_slots):
      return None
    cached = self._sharded_slots.setdefault(_sharded_key(container), {})
    slot = cached.get(slot_name)
    if slot is None:
      # Outside any `tf.function`: the container also makes a variable of the
      # whole shape (never initialized, for SavedModel signatures).
      with tf.init_scope():
        slot = ShardedVariable(
            shard_slots, name=f"{_slot_name_prefix(container)}/{slot_name}")
      cached[slot_name] = slot
    return slot

  def create(self, variable, slot_names, initializers: Dict[str, Callable]):
    """Creates the named slots of `variable`, restoring any saved values.

    Runs under `tf.init_scope` (so it may be called while tracing a
    `tf.function`) and under the strategy that owns `variable`, colocated
    with it, so a mirrored variable gets mirrored slots and a variable on a
    parameter server gets its slots beside it.

    Args:
      variable: The model variable (a Keras variable or a `tf.Variable`).
      slot_names: The slots to create.
      initializers: Maps slot name to a callable returning the initial value
        (only used where no checkpoint value is waiting).
    """
    key = variables_lib.key(variable)
    if key not in self._slots:
      self._variables.append(variable)
    slots = self._slots.setdefault(key, {})
    tf_variable = variables_lib.unwrap(variable)
    strategy = owning_strategy(tf_variable)
    container = tf_internals.sharded_container(tf_variable)
    with tf.init_scope():
      with strategy.scope(), strategy.extended.colocate_vars_with(tf_variable):
        for slot_name in slot_names:
          if slot_name in slots:
            continue
          positions = self._deferred[slot_name].pop(key, [])
          for position in positions:
            check_restorable_shape(position, slot_name, tf_variable)
          # Values saved for the whole sharded variable (checked against its
          # shape when deferred); this shard reads its slice of the newest.
          sharded = []
          if container is not None:
            sharded = self._deferred[slot_name].get(
                _sharded_key(container), [])
          newest = max(positions + sharded, key=lambda p: p.restore_uid,
                       default=None)
          positions.sort(key=lambda p: p.restore_uid, reverse=True)
          if newest is None:
            initial_value = initializers[slot_name]
          elif any(newest is p for p in sharded):
            initial_value = functools.partial(
                tf_internals.CheckpointInitialValueCallable(
                    checkpoint_position=newest),
                shape=container.shape.as_list(),
                shard_info=_shard_info(container, tf_variable))
          else:
            initial_value = tf_internals.CheckpointInitialValueCallable(
                checkpoint_position=positions[0])
          slot = self._make_slot(
              tf_variable, slot_name, initial_value,
              f"{_slot_name_prefix(tf_variable)}/{slot_name}")
          # Binds the slot to its checkpoint nodes (for `assert_consumed`); the
          # newest value is already its initial value, so nothing is re-read.
          for position in positions:
            position.restore(slot)
          slots[slot_name] = slot
          self.all_slots.append(slot)
      if container is not None:
        self._bind_sharded(container)

  def _bind_sharded(self, container) -> None:
    """Binds values saved for `container` once all its shards have the slot.

    The checkpoint node is the whole slot, so it is bound to the
    `ShardedVariable` of the shards' slots. A restore reads the values again
    only where some shard's slot was created before the value arrived (its
    `_update_uid`, set from the value it was created with, is older).

    Args:
      container: A `ShardedVariable` some of whose shards just got slots.
    """
    key = _sharded_key(container)
    for slot_name in list(self._deferred):
      positions = self._deferred[slot_name].get(key)
      if not positions:
        continue
      slot = self._sharded_slot(container, slot_name)
      if slot is None:
        continue
      del self._deferred[slot_name][key]
      tf_internals.mark_restored_no_earlier_than(slot, slot.variables)
      for position in sorted(positions, key=lambda p: p.restore_uid):
        position.restore(slot)

  def create_or_restore(self, slot_variable_position, slot_name: str, variable):
    """The checkpoint hook: returns an existing slot or defers the value.

    An existing slot is returned unrestored: the caller binds it and restores
    it together with every other value of the same restore, so a restore that
    fails changes nothing. For a `ShardedVariable` that is the shards' slots
    as one, restored slice by slice; a value for one whose shards do not all
    have the slot yet waits until they do.

    Raises:
      ValueError: The saved slot's shape does not match `variable`.
    """
    variable = variables_lib.unwrap(variable)
    check_restorable_shape(slot_variable_position, slot_name, variable)
    slot = self.get(variable, slot_name)
    if slot is not None:
      return slot
    if isinstance(variable, ShardedVariable):
      # Kept until every shard has the slot; each shard is created from its
      # slice (`create`), then the whole is bound (`_bind_sharded`).
      key = _sharded_key(variable)
    else:
      key = variables_lib.key(variable)
    self._deferred[slot_name][key].append(slot_variable_position)
    return None


class _SlotGroup(tf_internals.Trackable):
  """One variable's slots as ordinary children, plus the variable itself."""

  def __init__(self, variable, slots: Dict[str, tf.Variable]):
    self._variable = variable
    self._slots = dict(slots)

  def _trackable_children(self, save_type=tf_internals.SaveType.CHECKPOINT,
                          **kwargs):
    children = {VARIABLE_LINK: self._variable}
    children.update(self._slots)
    return children


class SlotExport(tf_internals.Trackable):
  """The slots of a `SlotTable` as ordinary children, for a SavedModel.

  A SavedModel must not contain slot-variable references: loading one calls
  `add_slot` on the revived optimizer, which a process without this library
  does not have. So a SavedModel holds one group per variable instead, whose
  children are the variable itself (`VARIABLE_LINK`, the same node as the
  model's) and its slots. Identity stays in the object graph: restoring the
  SavedModel's checkpoint into an `Adadelta` matches groups to variables
  through that link (`ExportedSlotsRestorer`), never by position.
  """

  def __init__(self, table: "SlotTable"):
    self._table = table

  def _trackable_children(self, save_type=tf_internals.SaveType.CHECKPOINT,
                          **kwargs):
    return {str(index): _SlotGroup(variable, self._table.slots_of(variable))
            for index, variable in enumerate(self._table.variables)}


class _ForwardPositions(dict):
  """Stands in for `Trackable._deferred_dependencies`, forwarding positions.

  TensorFlow defers each child it cannot look up with
  `_deferred_dependencies.setdefault(name, []).append(position)`; this hands
  every such position to `receive` at once instead of keeping it.
  """

  def __init__(self, receive: Callable):
    super().__init__()
    self._receive = receive

  def setdefault(self, key, default=None):
    del key, default
    return self

  def append(self, position):
    self._receive(position)


class ExportedSlotsRestorer(tf_internals.Trackable):
  """Restores slots that a SavedModel's checkpoint holds as `SlotExport`.

  The optimizer returns this object for the `EXPORTED_SLOTS` child while a
  checkpoint is restored. Each group names its variable's node: when that node
  is already matched to a Python variable, the group's values go through the
  optimizer's slot hook (restored now, or kept until the slot is created);
  otherwise they are registered as TensorFlow slot restorations of that node,
  resolved when the variable is matched.
  """

  def __init__(self, optimizer):
    self._optimizer = weakref.ref(optimizer)

  @property
  def _deferred_dependencies(self):
    return _ForwardPositions(self._restore_group)

  def _restore_group(self, group_position) -> None:
    optimizer = self._optimizer()
    checkpoint = group_position.checkpoint
    children = {child.local_name: child.node_id
                for child in group_position.object_proto.children}
    variable_id = children.pop(VARIABLE_LINK, None)
    if optimizer is None or variable_id is None:
      return
    optimizer_id = next(node_id for node_id, obj in
                        list(checkpoint.object_by_proto_id.items())
                        if obj is optimizer)
    restore_by_identity(optimizer, checkpoint, optimizer_id, variable_id,
                        children, group_position.create_child_position)


def restore_by_identity(optimizer, checkpoint, optimizer_id: int,
                        variable_id: int, slot_ids: Dict[str, int],
                        position_of: Callable) -> None:
  """Restores slots saved beside a variable's node, matched by identity.

  When the restore has already matched the variable's node to a Python
  variable, the values go through the optimizer's slot hook now (restored,
  or kept until the slot is created); otherwise they are registered as
  TensorFlow slot restorations of that node, resolved when it is matched.

  Args:
    optimizer: The optimizer (it has `_create_or_restore_slot_variable`).
    checkpoint: The restore's checkpoint object.
    optimizer_id: The optimizer's node id in the checkpoint.
    variable_id: The node id of the variable the slots belong to.
    slot_ids: Slot name -> the node id of its saved value.
    position_of: `fn(node_id)`: the checkpoint position of a node.
  """
  variable = checkpoint.object_by_proto_id.get(variable_id)
  for slot_name, slot_id in slot_ids.items():
    if variable is None:
      checkpoint.slot_restorations[variable_id].append(
          tf_internals.slot_variable_restoration(
              optimizer_id=optimizer_id, slot_variable_id=slot_id,
              slot_name=slot_name))
      continue
    slot_position = position_of(slot_id)
    slot = optimizer._create_or_restore_slot_variable(  # pylint: disable=protected-access
        slot_position, slot_name, variable)
    if slot is not None:
      slot_position.restore(slot)
