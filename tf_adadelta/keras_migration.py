"""Continuing a run of `keras.optimizers.Adadelta` with either face.

Keras keeps its state in lists ordered like the variables it was built with
(`_trainable_variables`), and one raw step counter, `_iterations`, that counts
`apply` calls (with gradient accumulation its public `iterations` is
`_iterations // gradient_accumulation_steps`). `from_keras` copies the config,
that counter and every slot onto `tf_adadelta.Adadelta` or
`tf_adadelta.keras.Adadelta`, slot by slot in that order.
"""

from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

# Keras's list of per-variable state -> the slot that holds it here.
_KERAS_SLOT_LISTS = (
    ("_accumulated_grads", "accumulated_grad"),
    ("_accumulated_delta_vars", "accumulated_delta_var"),
    ("_model_variables_moving_average", "average"),
    ("_accumulated_gradients", "gradient_accumulator"),
)

# `get_config` keys that are not constructor arguments here.
_IGNORED_CONFIG_KEYS = frozenset(["jit_compile"])


def _check_variable(variable):
  if not isinstance(variable, (tf.Variable, keras.Variable)):
    raise TypeError("`variables` must be tf.Variables or Keras variables. "
                    f"Received: {variable!r} of type "
                    f"{type(variable).__name__}.")
  return variable


def _constructor_args(keras_optimizer):
  config = dict(keras_optimizer.get_config())
  for key in _IGNORED_CONFIG_KEYS:
    config.pop(key, None)
  # The live learning rate: a schedule or callable object as is, a variable's
  # current value as a float.
  learning_rate = keras_optimizer._learning_rate  # pylint: disable=protected-access
  if isinstance(learning_rate, keras.Variable) or isinstance(
      learning_rate, tf.Variable):
    learning_rate = float(keras.ops.convert_to_numpy(learning_rate))
  config["learning_rate"] = learning_rate
  return config


def from_keras(cls, keras_optimizer: keras.optimizers.Adadelta,
               variables: Optional[Sequence[tf.Variable]] = None):
  """Creates a `cls` (an `Adadelta`) that continues `keras_optimizer`'s run.

  Args:
    cls: The optimizer class to create.
    keras_optimizer: A `keras.optimizers.Adadelta`, built or not.
    variables: When `keras_optimizer` is built, the variables to continue
      with: the ones it was built with, or copies of them, in the same order
      (`tf.Variable`s or Keras variables).

  Returns:
    A new optimizer with the Keras config; when `keras_optimizer` is built,
    also its step count and every slot, built on `variables`.

  Raises:
    TypeError: `keras_optimizer` is not a `keras.optimizers.Adadelta`.
    ValueError: `keras_optimizer` is built and `variables` is missing, or does
      not match its variables in number or shapes.
  """
  if not isinstance(keras_optimizer, keras.optimizers.Adadelta):
    hint = ""
    if isinstance(getattr(keras_optimizer, "inner_optimizer", None),
                  keras.optimizers.Adadelta):
      hint = (" For a LossScaleOptimizer, pass its `inner_optimizer` (the "
              "loss scale itself is not carried over).")
    raise TypeError("`from_keras` expects a keras.optimizers.Adadelta. "
                    f"Received: {type(keras_optimizer).__name__}.{hint}")
  optimizer = cls(**_constructor_args(keras_optimizer))
  # pylint: disable=protected-access
  keras_variables = list(getattr(keras_optimizer, "_trainable_variables", []))
  built = bool(keras_optimizer.built and keras_variables)
  if built:
    if variables is None:
      raise ValueError(
          "This Keras optimizer is built on "
          f"{len(keras_variables)} variables; pass `variables` (the same "
          "variables or copies, in the order it was built with) so its slots "
          "can be carried over.")
    variables = [_check_variable(v) for v in variables]
    if len(variables) != len(keras_variables):
      raise ValueError(
          f"The Keras optimizer is built on {len(keras_variables)} variables; "
          f"received {len(variables)} `variables`.")
    for index, (ours, theirs) in enumerate(zip(variables, keras_variables)):
      if tuple(ours.shape) != tuple(theirs.shape):
        raise ValueError(
            f"`variables[{index}]` ('{ours.name}') has shape {ours.shape}, but "
            f"the Keras optimizer's variable {index} ('{theirs.name}') has "
            f"shape {tuple(theirs.shape)}; pass the variables in the order "
            "the Keras optimizer was built with.")

  # Keras excludes variables from weight decay by `id` (mapped through the
  # build order) and by a name pattern.
  excluded_ids = getattr(keras_optimizer, "_exclude_from_weight_decay", set())
  pattern = getattr(keras_optimizer, "_exclude_from_weight_decay_pattern", None)
  excluded = [ours for ours, theirs in zip(variables or [], keras_variables)
              if keras_optimizer._var_key(theirs) in excluded_ids]
  if excluded or pattern is not None:
    optimizer.exclude_from_weight_decay(
        var_list=excluded,
        var_names=[pattern.pattern] if pattern is not None else None)

  if built:
    optimizer.build(variables)
    slot_names = optimizer.get_slot_names()
    for keras_list, slot_name in _KERAS_SLOT_LISTS:
      values = getattr(keras_optimizer, keras_list, None)
      if slot_name not in slot_names or not values:
        continue
      for variable, value in zip(variables, values):
        if value is not None:
          optimizer.get_slot(variable, slot_name).assign(
              np.asarray(keras.ops.convert_to_numpy(value)))

  optimizer._assign_call_count(  # Each face's counters, from the raw count.
      int(keras.ops.convert_to_numpy(keras_optimizer._iterations)))
  # pylint: enable=protected-access
  return optimizer
