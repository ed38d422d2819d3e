"""Byte-level snapshots of optimizer and model state.

For tests that a call changed nothing: no variable, slot, average,
accumulator or counter, and no new slot either.
"""

import numpy as np


def snapshot(optimizer, variables=()):
  """Copies the value of every variable of `optimizer` and of `variables`.

  Args:
    optimizer: A `tf_adadelta.Adadelta` (or any `tf.Module`).
    variables: Further variables (the model's).

  Returns:
    A list of `(name, array)` pairs, the optimizer's variables first.
  """
  return [(v.name, np.array(v.numpy(), copy=True))
          for v in list(optimizer.variables) + list(variables)]


def assert_unchanged(before, optimizer, variables=()):
  """Asserts that the state is byte-for-byte what `snapshot` recorded."""
  after = snapshot(optimizer, variables)
  assert [name for name, _ in after] == [name for name, _ in before], (
      "variables were created or removed")
  for (name, old), (_, new) in zip(before, after):
    assert old.dtype == new.dtype and old.shape == new.shape, name
    assert np.array_equal(old, new, equal_nan=old.dtype.kind == "f"), name
    assert old.tobytes() == new.tobytes(), name
