"""Slot variables, keyed by the identity of the variable they belong to.

This is TensorFlow's slot-variable protocol (the one `OptimizerV2` follows):
checkpoints record each slot as an edge `(optimizer, variable, slot name)` in
the object graph, so a restore matches slots to variables by identity, never
by position or name. When a checkpoint is restored before a slot exists, the
saved value is kept and becomes the slot's initial value once the slot is
created, lazily, by the first update.
"""

import collections
from typing import Callable, Dict, List, Optional

import tensorflow as tf


def variable_key(variable) -> str:
  """A key for `variable` that is the same for every replica of it."""
  if isinstance(variable, tf.distribute.DistributedValues):
    # The container itself; its `handle` raises outside replica context.
    return variable._unique_id  # pylint: disable=protected-access
  if hasattr(variable, "_distributed_container"):
    variable = variable._distributed_container()  # pylint: disable=protected-access
  elif hasattr(getattr(variable, "handle", None), "_distributed_container"):
    variable = variable.handle._distributed_container()  # pylint: disable=protected-access
  return variable._unique_id  # pylint: disable=protected-access


def owning_strategy(variable) -> tf.distribute.Strategy:
  """The strategy that created `variable` (the default strategy if none)."""
  strategy = getattr(variable, "_distribute_strategy", None)
  return strategy or tf.distribute.get_strategy()


def _slot_name_prefix(variable) -> str:
  name = getattr(variable, "_shared_name", None) or variable.name
  return name.split(":")[0]


class SlotTable:
  """Holds the slots of every variable an optimizer has seen.

  Not a `Trackable` itself: the optimizer exposes `get_slot_names`, `get_slot`
  and `create_or_restore`, which the checkpoint machinery calls.
  """

  def __init__(self):
    self._slots: Dict[str, Dict[str, tf.Variable]] = {}
    self._variables: List[tf.Variable] = []
    self._slot_names: List[str] = []
    # slot name -> variable key -> checkpoint positions waiting for the slot.
    self._deferred = collections.defaultdict(
        lambda: collections.defaultdict(list))
    # Every slot, in creation order; `tf.Module.variables` collects this list.
    self.all_slots: List[tf.Variable] = []

  @property
  def variables(self) -> List[tf.Variable]:
    """The variables that have slots, in the order they were first seen."""
    return list(self._variables)

  def slot_names(self) -> List[str]:
    return list(self._slot_names)

  def has(self, variable) -> bool:
    return variable_key(variable) in self._slots

  def get(self, variable, slot_name: str) -> Optional[tf.Variable]:
    return self._slots.get(variable_key(variable), {}).get(slot_name)

  def slots_for(self, variable) -> Dict[str, tf.Variable]:
    return self._slots[variable_key(variable)]

  def create(self, variable, slot_names, initializers: Dict[str, Callable]):
    """Creates the named slots of `variable`, restoring any saved values.

    Runs under `tf.init_scope` (so it may be called while tracing a
    `tf.function`) and under the strategy that owns `variable`, colocated
    with it, so a mirrored variable gets mirrored slots and a variable on a
    parameter server gets its slots beside it.

    Args:
      variable: The model variable.
      slot_names: The slots to create.
      initializers: Maps slot name to a callable returning the initial value
        (only used where no checkpoint value is waiting).
    """
    key = variable_key(variable)
    slots = self._slots.setdefault(key, {})
    if not slots:
      self._variables.append(variable)
    strategy = owning_strategy(variable)
    with tf.init_scope():
      with strategy.scope(), strategy.extended.colocate_vars_with(variable):
        for slot_name in slot_names:
          if slot_name in slots:
            continue
          positions = self._deferred[slot_name].pop(key, [])
          positions.sort(key=lambda p: p.restore_uid, reverse=True)
          if positions:
            initial_value = tf.__internal__.tracking.CheckpointInitialValueCallable(
                checkpoint_position=positions[0])
          else:
            initial_value = initializers[slot_name]
          slot = tf.Variable(
              initial_value,
              name=f"{_slot_name_prefix(variable)}/{slot_name}",
              dtype=variable.dtype,
              shape=variable.shape,
              trainable=False)
          for position in positions[1:]:
            position.restore(slot)
          slots[slot_name] = slot
          self.all_slots.append(slot)
          if slot_name not in self._slot_names:
            self._slot_names.append(slot_name)

  def create_or_restore(self, slot_variable_position, slot_name: str, variable):
    """The checkpoint hook: restores an existing slot or defers the value."""
    slot = self.get(variable, slot_name)
    if slot is not None:
      slot_variable_position.restore(slot)
      return slot
    self._deferred[slot_name][variable_key(variable)].append(
        slot_variable_position)
    return None
