"""Checks on arguments and gradients, all done before any state changes."""

import numbers
import re
import warnings
from typing import List, Tuple

import numpy as np
import tensorflow as tf

from tf_adadelta import learning_rate as lr_lib
from tf_adadelta import variables as variables_lib


# How `tf.IndexedSlices` gradients update: as Keras does ("keras"), or only the
# rows they touch ("lazy").
SPARSE_UPDATES = ("keras", "lazy")


def _is_real(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_real(name, value, low=None, high=None, low_open=False,
                optional=False):
  if value is None and optional:
    return
  if not _is_real(value):
    raise TypeError(f"Argument `{name}` must be a float. "
                    f"Received: {name}={value!r} of type "
                    f"{type(value).__name__}.")
  if not np.isfinite(value):
    raise ValueError(f"Argument `{name}` must be finite. Received: "
                     f"{name}={value!r}.")
  if low is not None and (value <= low if low_open else value < low):
    bound = f"> {low}" if low_open else f">= {low}"
    raise ValueError(f"Argument `{name}` must be {bound}. Received: "
                     f"{name}={value!r}.")
  if high is not None and value > high:
    raise ValueError(f"Argument `{name}` must be <= {high}. Received: "
                     f"{name}={value!r}.")


def _check_int(name, value, low):
  if value is None:
    return
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise TypeError(f"Argument `{name}` must be an integer >= {low} or None. "
                    f"Received: {name}={value!r} of type "
                    f"{type(value).__name__}.")
  if value < low:
    raise ValueError(f"Argument `{name}` must be an integer >= {low} or None. "
                     f"Received: {name}={value!r}.")


def check_constructor_args(*, learning_rate, rho, epsilon, weight_decay,
                           clipnorm, clipvalue, global_clipnorm, use_ema,
                           ema_momentum, ema_overwrite_frequency,
                           loss_scale_factor, gradient_accumulation_steps,
                           name, jit_compile, skip_nonfinite_steps=False,
                           sparse_updates="keras", kwargs) -> None:
  """Validates `Adadelta`'s constructor arguments.

  Raises:
    TypeError: an argument has the wrong type, or is not recognized.
    ValueError: an argument is out of its range, or clipping modes conflict.
  """
  if kwargs:
    raise TypeError(f"Argument(s) not recognized: {sorted(kwargs)}. "
                    "Adadelta takes the arguments of "
                    "keras.optimizers.Adadelta.")
  lr_lib.check(learning_rate)
  _check_real("rho", rho, 0.0, 1.0)
  _check_real("epsilon", epsilon, 0.0, low_open=True)
  _check_real("weight_decay", weight_decay, 0.0, optional=True)
  for clip_name, clip in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                          ("global_clipnorm", global_clipnorm)):
    _check_real(clip_name, clip, 0.0, low_open=True, optional=True)
  set_clips = [n for n, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                              ("global_clipnorm", global_clipnorm))
               if v is not None]
  if len(set_clips) > 1:
    raise ValueError("Only one of `clipnorm`, `clipvalue` and "
                     "`global_clipnorm` can be set. Received: "
                     f"clipnorm={clipnorm}, clipvalue={clipvalue}, "
                     f"global_clipnorm={global_clipnorm}.")
  if not isinstance(use_ema, (bool, np.bool_)):
    raise TypeError(f"Argument `use_ema` must be a bool. Received: "
                    f"use_ema={use_ema!r}.")
  _check_real("ema_momentum", ema_momentum, 0.0, 1.0)
  _check_int("ema_overwrite_frequency", ema_overwrite_frequency, 1)
  _check_real("loss_scale_factor", loss_scale_factor, 0.0, low_open=True,
              optional=True)
  _check_int("gradient_accumulation_steps", gradient_accumulation_steps, 2)
  if not isinstance(name, str) or not name:
    raise TypeError(f"Argument `name` must be a non-empty string. Received: "
                    f"name={name!r}.")
  if jit_compile not in (None, True, False):
    raise TypeError("Argument `jit_compile` must be True, False or None "
                    f"(automatic). Received: jit_compile={jit_compile!r}.")
  if not isinstance(skip_nonfinite_steps, (bool, np.bool_)):
    raise TypeError("Argument `skip_nonfinite_steps` must be a bool. "
                    f"Received: skip_nonfinite_steps={skip_nonfinite_steps!r}.")
  if not isinstance(sparse_updates, str):
    raise TypeError("Argument `sparse_updates` must be a string, one of "
                    f"{list(SPARSE_UPDATES)}. Received: "
                    f"sparse_updates={sparse_updates!r}.")
  if sparse_updates not in SPARSE_UPDATES:
    raise ValueError("Argument `sparse_updates` must be one of "
                     f"{list(SPARSE_UPDATES)}. Received: "
                     f"sparse_updates={sparse_updates!r}.")


def _variable_name(variable) -> str:
  return variables_lib.display_name(variable)


def check_variable(variable):
  """Returns `variable` if the optimizer can update it.

  Args:
    variable: A float `tf.Variable`, or a Keras variable wrapping one.

  Returns:
    `variable`, as given.

  Raises:
    TypeError: `variable` is not a float `tf.Variable` or Keras variable.
  """
  if not variables_lib.is_float_variable(variable):
    inner = variables_lib.unwrap(variable)
    raise TypeError(
        "Adadelta can only update float tf.Variables or Keras variables "
        "(float16, bfloat16, float32, float64). Received "
        f"{type(variable).__name__} '{_variable_name(variable)}'"
        + (f" of dtype {tf.as_dtype(inner.dtype).name}"
           if hasattr(inner, "dtype") else "") + ".")
  return variable


def _as_gradient(grad, variable):
  """Converts NumPy arrays and lists to tensors; keeps tensors as they are."""
  if isinstance(grad, (tf.Tensor, tf.IndexedSlices)):
    return grad
  if hasattr(grad, "values") and isinstance(grad, tf.__internal__.CompositeTensor):
    raise TypeError(f"The gradient of variable '{_variable_name(variable)}' "
                    f"has unsupported type {type(grad).__name__}; expected a "
                    "dense tensor or tf.IndexedSlices.")
  try:
    return tf.convert_to_tensor(grad, dtype_hint=variable.dtype)
  except (TypeError, ValueError) as e:
    raise TypeError(f"The gradient of variable '{_variable_name(variable)}' "
                    f"could not be converted to a tensor: {e}") from e


def _check_gradient(grad, variable):
  name = _variable_name(variable)
  if not grad.dtype.is_floating:
    raise TypeError(f"The gradient of variable '{name}' must be a float "
                    f"tensor. Received dtype {grad.dtype.name}.")
  if isinstance(grad, tf.IndexedSlices):
    row_shape = grad.values.shape[1:]
    if (variable.shape.rank is not None and
        not row_shape.is_compatible_with(variable.shape[1:])):
      raise ValueError(f"The tf.IndexedSlices gradient of variable '{name}' "
                       f"has rows of shape {row_shape}, but the variable has "
                       f"shape {variable.shape}.")
  elif not grad.shape.is_compatible_with(variable.shape):
    raise ValueError(f"The gradient of variable '{name}' has shape "
                     f"{grad.shape}, but the variable has shape "
                     f"{variable.shape}.")


def ensure_shapes(grads, variables) -> Tuple[List, List]:
  """Checks, when the step runs, shapes that are unknown while tracing.

  `check_grads_and_vars` compares static shapes. Inside a `tf.function` whose
  gradients have unknown dimensions (a `None` in an input signature), each
  such gradient goes through `tf.ensure_shape` instead, in an op named after
  its variable; the update waits for all of them, so a mismatch still raises
  before any state changes. (An assertion on `tf.shape` would not do: graph
  optimization may fold it with the shape the update implies.)

  Args:
    grads: The gradients, as `check_grads_and_vars` returns them.
    variables: Their variables.

  Returns:
    `(grads, checks)`: the gradients, checked ones replaced by the checked
    tensors, and the checked tensors (empty when every shape is known, as in
    eager mode).
  """
  checked, checks = [], []
  for grad, variable in zip(grads, variables):
    sparse = isinstance(grad, tf.IndexedSlices)
    values = grad.values if sparse else grad
    if values.shape.is_fully_defined():
      checked.append(grad)
      continue
    # A tf.IndexedSlices gradient must match the variable's rows.
    shape = ([None] + variable.shape[1:].as_list() if sparse
             else variable.shape)
    name = re.sub(r"\W", "_", _variable_name(variable).split(":")[0])
    values = tf.ensure_shape(values, shape, name=f"gradient_shape_of_{name}")
    checks.append(values)
    checked.append(tf.IndexedSlices(values, grad.indices, grad.dense_shape)
                   if sparse else values)
  return checked, checks


def check_grads_and_vars(grads_and_vars) -> Tuple[List, List, List]:
  """Validates gradient/variable pairs and sets apart those with no gradient.

  Args:
    grads_and_vars: An iterable of `(gradient, variable)` pairs. Gradients may
      be tensors, `tf.IndexedSlices`, NumPy arrays or `None`.

  Returns:
    `(grads, variables, without_grads)`: the gradients and their variables,
    and the variables whose gradient is `None`.

  Raises:
    TypeError: a pair is malformed, a variable is not a float `tf.Variable`, or
      a gradient is not a float tensor.
    ValueError: every gradient is `None`, a shape does not match its variable,
      or a variable appears twice.
  """
  try:
    pairs = list(grads_and_vars)
  except TypeError as e:
    raise TypeError("Argument `grads_and_vars` must be an iterable of "
                    f"(gradient, variable) pairs. Received: {grads_and_vars!r}"
                    ) from e
  grads, variables, without_grads, seen = [], [], [], set()
  for pair in pairs:
    try:
      grad, variable = pair
    except (TypeError, ValueError) as e:
      raise TypeError("Argument `grads_and_vars` must hold (gradient, "
                      f"variable) pairs. Received an element {pair!r}.") from e
    variable = check_variable(variable)
    key = variables_lib.key(variable)
    if key in seen:
      raise ValueError(f"Variable '{_variable_name(variable)}' appears more "
                       "than once in `grads_and_vars`; sum its gradients "
                       "first.")
    seen.add(key)
    if grad is None:
      without_grads.append(variable)
      continue
    grad = _as_gradient(grad, variables_lib.unwrap(variable))
    _check_gradient(grad, variables_lib.unwrap(variable))
    grads.append(grad)
    variables.append(variable)
  if pairs and not grads:
    raise ValueError("No gradients provided for any variable: "
                     f"{[_variable_name(v) for _, v in pairs]}.")
  if without_grads:
    warnings.warn("Gradients do not exist for variables "
                  f"{[_variable_name(v) for v in without_grads]} when "
                  "minimizing the loss; they are not updated.", stacklevel=3)
  return grads, variables, without_grads
