"""Byte-level snapshots of optimizer and model state.

For tests that a call changed nothing: no variable, slot, average,
accumulator or counter, and no new slot either.
"""

import numpy as np


def snapshot(optimizer, variables=(), exclude=()):
  """Copies the value of every variable of `optimizer` and of `variables`.

  Args:
    optimizer: A `tf_adadelta.Adadelta` (or any `tf.Module`).
    variables: Further variables (the model's).
    exclude: Variables to leave out (a counter that is meant to change).

  Returns:
    A list of `(name, array)` pairs, the optimizer's variables first.
  """
  excluded = {id(v) for v in exclude}
  return [(v.name, np.array(v.numpy(), copy=True))
          for v in list(optimizer.variables) + list(variables)
          if id(v) not in excluded]


def model_state(model, optimizer):
  """`iterations`, each trainable variable of `model` and each of its slots.

  Keys are positions ("var/<i>", "slot/<i>/<slot name>"), so the states of
  two copies of a model compare key by key.
  """
  out = {"iterations": np.asarray(optimizer.iterations.numpy())}
  for i, variable in enumerate(model.trainable_variables):
    out[f"var/{i}"] = variable.numpy()
    for name in optimizer.get_slot_names():
      out[f"slot/{i}/{name}"] = optimizer.get_slot(variable, name).numpy()
  return out


def assert_unchanged(before, optimizer, variables=(), exclude=()):
  """Asserts that the state is byte-for-byte what `snapshot` recorded."""
  after = snapshot(optimizer, variables, exclude)
  assert [name for name, _ in after] == [name for name, _ in before], (
      "variables were created or removed")
  for (name, old), (_, new) in zip(before, after):
    assert old.dtype == new.dtype and old.shape == new.shape, name
    assert np.array_equal(old, new, equal_nan=old.dtype.kind == "f"), name
    assert old.tobytes() == new.tobytes(), name
