"""Optimizer state written by other optimizers, restored into either face.

A checkpoint's optimizer node has one of four layouts:

- `MODULE` (`tf_adadelta.Adadelta`): children `iterations` (applied steps),
  `micro_iterations` (calls, with gradient accumulation), `skipped_steps`
  and `_learning_rate`; slots through TensorFlow's slot-variable protocol,
  recorded against their variable's node.
- `KERAS_FACE` (`tf_adadelta.keras.Adadelta`): `_iterations` (calls),
  `_learning_rate`, `skipped_steps`, and `_variables`: those, then the slots
  in the order of Keras's (`keras_variable_order`), for the variables in the
  order the optimizer was built with. Nothing records which variable a slot
  belongs to.
- `KERAS` (`keras.optimizers.Adadelta`): `_iterations`, `_learning_rate`,
  `_trainable_variables` (the model's variables, in build order, so the
  same nodes as the model's) and one list per slot aligned with it.
- `TF1` (`tf.compat.v1.train.AdadeltaOptimizer`): slots `accum` and
  `accum_update` through the slot-variable protocol; no step count.

TensorFlow restores each face's own names. The names of other layouts are
unknown dependencies to it, which it hands to the face's
`_deferred_dependencies`; `StateReader` takes them there, reads the whole
optimizer node once per restore and puts each value where the face keeps it:
the call count now, slots by identity where the checkpoint records it (Keras's
`_trainable_variables`), otherwise by position in the order the face is
built with (what Keras itself does). A checkpoint whose state the face
cannot hold (other slots, another number of variables) is refused with a
`ValueError` that names the layout, before anything is restored.
"""

import collections
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import logging
import tensorflow as tf

from tf_adadelta import slots as slots_lib
from tf_adadelta import tf_internals
from tf_adadelta import variables as variables_lib

MODULE = "tf_adadelta.Adadelta"
KERAS_FACE = "tf_adadelta.keras.Adadelta"
KERAS = "keras.optimizers.Adadelta"
TF1 = "tf.compat.v1.train.AdadeltaOptimizer"

# Keras's per-variable lists -> the slot that holds each here. The order is
# that of Keras's `_variables` (averages, accumulators, then the two
# Adadelta slots of each variable), which `.keras` files store by position.
KERAS_SLOT_LISTS = collections.OrderedDict([
    ("_model_variables_moving_average", "average"),
    ("_accumulated_gradients", "gradient_accumulator"),
    ("_accumulated_grads", "accumulated_grad"),
    ("_accumulated_delta_vars", "accumulated_delta_var"),
])
# TF1's slot names -> ours (the update rule is the same).
TF1_SLOTS = {"accum": "accumulated_grad", "accum_update": "accumulated_delta_var"}

_VALUE = "VARIABLE_VALUE"
_MIGRATE = (
    "To move between optimizers, restore into an optimizer created with the "
    "configuration the checkpoint was written with (use_ema, "
    "gradient_accumulation_steps) and the model's trainable variables in the "
    "order they were built with (`model.trainable_variables`), or continue a "
    "live Keras optimizer with `from_keras`.")

# The children each face restores itself; every other name of a layout
# above comes to `StateReader`.
FOREIGN_TO_MODULE = frozenset(
    ["_iterations", "_variables", "_trainable_variables",
     "_trainable_variables_indices", *KERAS_SLOT_LISTS])
FOREIGN_TO_KERAS_FACE = frozenset(
    # `_variables` too: this face's own list is positional and Keras's is
    # ordered otherwise, so both go through the reader.
    ["iterations", "micro_iterations", "_variables", *KERAS_SLOT_LISTS])


def detect(children: Dict[str, int]) -> str:
  """The layout of an optimizer node, from its children's names."""
  if any(name in children for name in KERAS_SLOT_LISTS):
    return KERAS
  if "_variables" in children or "_iterations" in children:
    return KERAS_FACE  # Also an unbuilt Keras optimizer's: the same values.
  if "iterations" in children:
    return MODULE
  return TF1


# The groups of slots in the order Keras's Adadelta creates them, variable by
# variable within each group; the Keras face creates its slots so too.
KERAS_CREATION_ORDER = (("average",), ("gradient_accumulator",),
                        ("accumulated_grad", "accumulated_delta_var"))


def keras_variable_order(variables: Sequence[Any],
                         slot_names: Callable[[Any], List[str]]
                         ) -> List[tuple]:
  """`(variable index, slot name)` in the order of Keras's `_variables`.

  Args:
    variables: The variables in build order.
    slot_names: `fn(variable)`: the slots the face gives it.

  Returns:
    One pair per slot, in the order a `keras.optimizers.Adadelta` (or the
    Keras face) built on `variables` lists them after its counters.
  """
  return [(index, name) for group in KERAS_CREATION_ORDER
          for index, variable in enumerate(variables)
          for name in slot_names(variable) if name in group]


class _Appender:
  """The list TensorFlow appends a deferred position to; forwards it."""

  def __init__(self, receive: Callable[[Any], None]):
    self._receive = receive

  def append(self, position) -> None:
    self._receive(position)


class _DeferredDependencies:
  """A face's `_deferred_dependencies`, with foreign names forwarded."""

  def __init__(self, real: dict, foreign, receive):
    self._real = real
    self._foreign = foreign
    self._receive = receive

  def setdefault(self, name, default=None):
    if name in self._foreign:
      return _Appender(lambda position: self._receive(name, position))
    return self._real.setdefault(name, default)

  def __getattr__(self, attribute):
    return getattr(self._real, attribute)

  def __contains__(self, name):
    return name in self._real

  def __getitem__(self, name):
    return self._real[name]

  def __iter__(self):
    return iter(self._real)

  def __len__(self):
    return len(self._real)


class StateReader:
  """Restores the checkpoint layouts a face does not restore itself.

  Args:
    face: The optimizer. It provides `_assign_call_count(calls)`,
      `_create_or_restore_slot_variable`, and `get_slot_names()`.
    table: The face's `slots.SlotTable`.
    own_layout: `MODULE` or `KERAS_FACE`.
    call_count: The face's variable that counts calls (Keras's
      `_iterations`), bound to the checkpoint's count.
    slot_names: `fn(variable)`: the slots the face gives `variable`.
    derived_counters: The face's counters set from the call count (the
      module face's `iterations` under gradient accumulation).
  """

  def __init__(self, face, table, own_layout: str, call_count,
               slot_names: Callable[[Any], List[str]],
               derived_counters: Sequence[Any] = ()):
    self._face = face
    self._derived_counters = list(derived_counters)
    self._table = table
    self._own_layout = own_layout
    self._call_count = call_count
    self._slot_names = slot_names
    self._foreign = (FOREIGN_TO_MODULE if own_layout == MODULE
                     else FOREIGN_TO_KERAS_FACE)
    self._read_uids = set()
    self._pending: Optional[_Pending] = None
    self._warned_tf1 = False
    self._scratch = None

  # --- Hooks of the face ----------------------------------------------------

  def deferred_dependencies(self, real: dict):
    """The face's `_deferred_dependencies`: `real`, foreign names forwarded."""
    return _DeferredDependencies(real, self._foreign, self._receive)

  def slot_name(self, saved_name: str) -> str:
    """The slot a saved slot-protocol name restores into (TF1's renamed)."""
    if saved_name in TF1_SLOTS:
      if not self._warned_tf1:
        self._warned_tf1 = True
        logging.warning(
            "Restoring the slots of a %s checkpoint (`accum`, "
            "`accum_update`) into %s. Such a checkpoint holds no step "
            "count: `iterations` keeps its value; assign it (for example "
            "from your global step) if a learning-rate schedule, EMA or "
            "gradient accumulation depends on it.", TF1, self._own_layout)
      return TF1_SLOTS[saved_name]
    return saved_name

  def before_build(self, variables: Sequence[Any]) -> None:
    """Places values waiting for the build order before slots are created.

    Args:
      variables: The variables of the face's first build, in order.

    Raises:
      ValueError: The checkpoint holds state for other variables.
    """
    if self._pending is not None and not self._table.variables:
      self._place(self._pending, list(variables))

  # --- Reading a checkpoint -------------------------------------------------

  def _receive(self, name: str, position) -> None:
    """Reads the optimizer node of a restore, at its first foreign child."""
    del name
    if position.restore_uid in self._read_uids:
      return
    self._read_uids.add(position.restore_uid)
    checkpoint = position.checkpoint
    optimizer_id = next(node_id for node_id, obj in
                        list(checkpoint.object_by_proto_id.items())
                        if obj is self._face)
    node = checkpoint.object_graph_proto.nodes[optimizer_id]
    children = {child.local_name: child.node_id for child in node.children}
    layout = detect(children)
    child = position.create_child_position

    if layout == MODULE:
      self._check_slot_names(layout, [self.slot_name(slot.slot_name)
                                      for slot in node.slot_variables])
      calls = children.get("micro_iterations", children.get("iterations"))
      self._restore_calls(child(calls))
      for counter in ("iterations", "micro_iterations"):
        if counter in children and children[counter] != calls:
          # Derived from the call count; read into a scratch variable so the
          # node counts as restored (`assert_consumed`). The checkpoint holds
          # its objects weakly: the reader keeps it.
          with tf.init_scope():
            self._scratch = tf.Variable(0, dtype=tf.int64, trainable=False)
          child(children[counter]).restore(self._scratch)
      return  # The slots come through the slot-variable protocol.
    if "_iterations" in children and self._own_layout == MODULE:
      self._restore_calls(child(children["_iterations"]))

    pending = _Pending(layout, checkpoint, optimizer_id, child)
    if layout == KERAS:
      lists = {slot_name: _list_children(checkpoint, children.get(list_name))
               for list_name, slot_name in KERAS_SLOT_LISTS.items()}
      self._check_slot_names(layout, [name for name, ids in lists.items()
                                      if ids])
      variable_ids = _list_children(checkpoint,
                                    children.get("_trainable_variables"))
      for index, variable_id in sorted(variable_ids.items()):
        slot_ids = {name: ids[index] for name, ids in lists.items()
                    if index in ids}
        pending.groups.append((variable_id, slot_ids))
        if not self._table.variables:
          # By identity, when the restore matches the variable (before the
          # first step); `_place` takes the ones it never matches.
          slots_lib.restore_by_identity(self._face, checkpoint, optimizer_id,
                                        variable_id, slot_ids, child)
    else:
      named = set(children[counter] for counter in
                  ("_iterations", "_learning_rate", "skipped_steps")
                  if counter in children)
      entries = _list_children(checkpoint, children.get("_variables"))
      pending.positions = [child(node_id) for _, node_id
                           in sorted(entries.items()) if node_id not in named]
    if not (pending.positions or pending.groups):
      return
    self._pending = pending
    if self._table.variables:
      self._place(pending, self._table.variables)

  def _restore_calls(self, position) -> None:
    """Sets the face's counters from a checkpoint's call count."""
    position.restore(self._call_count)
    self._face._assign_call_count(int(self._call_count.numpy()))  # pylint: disable=protected-access
    for counter in self._derived_counters:
      tf_internals.mark_matched(position.checkpoint, counter)

  def _check_slot_names(self, layout: str, saved: Sequence[str]) -> None:
    own = set(self._face.get_slot_names())
    missing = sorted(set(saved) - own)
    if missing:
      raise ValueError(
          f"Cannot restore this checkpoint's optimizer state into "
          f"{self._own_layout}: it was written by {layout} with the slots "
          f"{sorted(set(saved))}, and this optimizer has no {missing} slot "
          f"(slots depend on use_ema and gradient_accumulation_steps). "
          f"{_MIGRATE} Nothing of the optimizer was restored.")

  # --- Placing slot values --------------------------------------------------

  def _place(self, pending: "_Pending", variables: List[Any]) -> None:
    """Gives each waiting slot value to its variable's slot.

    Keras groups whose variable the restore has matched go by identity; the
    others (the model is not in the checkpoint, or, for a built face, not
    restored yet), and the Keras face's values, by position in `variables`,
    the build order (as Keras restores its own).

    Raises:
      ValueError: The values do not fit `variables` in number or shape.
    """
    checkpoint = pending.checkpoint
    if pending.layout == KERAS:
      unmatched = [(index, variable_id, slot_ids) for index,
                   (variable_id, slot_ids) in enumerate(pending.groups)
                   if checkpoint.object_by_proto_id.get(variable_id) is None]
      matched = [(checkpoint.object_by_proto_id[variable_id], slot_ids)
                 for variable_id, slot_ids in pending.groups
                 if checkpoint.object_by_proto_id.get(variable_id) is not None]
      if unmatched and len(pending.groups) != len(variables):
        raise ValueError(
            f"Cannot restore this checkpoint's optimizer state into "
            f"{self._own_layout}: it was written by {pending.layout} for "
            f"{len(pending.groups)} variables that this restore did not "
            f"match (the model is not in the checkpoint), and this "
            f"optimizer is built with {len(variables)}. {_MIGRATE} Nothing "
            "of the optimizer was restored.")
      placed = [(variables[index], name, pending.child(slot_id))
                for index, _, slot_ids in unmatched
                for name, slot_id in slot_ids.items()]
      if self._table.variables:  # Built: the matched ones are not registered.
        placed.extend((variable, name, pending.child(slot_id))
                      for variable, slot_ids in matched
                      for name, slot_id in slot_ids.items())
    else:
      order = keras_variable_order(variables, self._slot_names)
      if len(order) != len(pending.positions):
        raise ValueError(
            f"Cannot restore this checkpoint's optimizer state into "
            f"{self._own_layout}: it was written by {pending.layout} with "
            f"{len(pending.positions)} slot values, and this optimizer has "
            f"{len(order)} for its {len(variables)} variables. {_MIGRATE} "
            "Nothing of the optimizer was restored.")
      placed = [(variables[index], name, position) for (index, name), position
                in zip(order, pending.positions)]
    for variable, name, position in placed:
      _check_shape(pending.layout, name, variable, position)
    # Checked: from here on nothing fails.
    self._pending = None
    if pending.layout == KERAS:
      for _, variable_id, _ in unmatched:
        _drop_slot_restorations(checkpoint, variable_id, pending.optimizer_id)
    for variable, name, position in placed:
      slot = self._table.create_or_restore(position, name, variable)
      if slot is not None:
        position.restore(slot)


class _Pending:
  """Slot values of one restore that wait for the face's build order."""

  def __init__(self, layout: str, checkpoint, optimizer_id: int, child):
    self.layout = layout
    self.checkpoint = checkpoint
    self.optimizer_id = optimizer_id
    self.child = child  # node id -> its checkpoint position.
    # KERAS_FACE: the slot positions, in order.
    self.positions: List[Any] = []
    # KERAS: per build index, (variable node id, {slot name: slot node id}).
    self.groups: List[tuple] = []


def _drop_slot_restorations(checkpoint, variable_id, optimizer_id) -> None:
  """Withdraws slot restorations registered for a variable never matched."""
  kept = [r for r in checkpoint.slot_restorations.get(variable_id, [])
          if r.optimizer_id != optimizer_id]
  if kept:
    checkpoint.slot_restorations[variable_id] = kept
  else:
    checkpoint.slot_restorations.pop(variable_id, None)


def _list_children(checkpoint, node_id: Optional[int]) -> Dict[int, int]:
  """Index -> node id of a saved list's elements (None elements are absent)."""
  if node_id is None:
    return {}
  return {int(child.local_name): child.node_id
          for child in checkpoint.object_graph_proto.nodes[node_id].children}


def _check_shape(layout, slot_name, variable, position) -> None:
  saved = position.value_shape()
  if saved is None:
    return
  shape = variables_lib.unwrap(variable).shape
  if not tf.TensorShape(saved).is_compatible_with(shape):
    raise ValueError(
        f"Cannot restore the {layout} slot '{slot_name}' into variable "
        f"'{variables_lib.display_name(variable)}': the checkpoint holds "
        f"shape {tf.TensorShape(saved)}, the variable has shape {shape}. "
        f"{_MIGRATE} Nothing of the optimizer was restored.")
