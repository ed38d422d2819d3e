"""`tf_adadelta.keras.Adadelta`: the library's Adadelta for `model.compile`.

A `keras.optimizers.Optimizer`, so Keras's `compile`/`fit`, `.keras` files,
`BackupAndRestore`, callbacks and `LossScaleOptimizer` take it; it runs the
same `step.Step` as `tf_adadelta.Adadelta`, over Keras variables it owns.

`import tf_adadelta` registers the class for Keras serialization (as
`"tf_adadelta>Adadelta"`), so `keras.models.load_model` finds it without
`custom_objects`.
"""

from typing import Any, Dict, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tf_adadelta import arguments
from tf_adadelta import checkpoint_layouts
from tf_adadelta import distribution
from tf_adadelta import keras_migration
from tf_adadelta import learning_rate as lr_lib
from tf_adadelta import slots as slots_lib
from tf_adadelta import step as step_lib
from tf_adadelta import validation
from tf_adadelta import variables as variables_lib


@keras.saving.register_keras_serializable(package="tf_adadelta",
                                          name="Adadelta")
class Adadelta(keras.optimizers.Optimizer):
  """Optimizer that implements the Adadelta algorithm, for Keras `fit`.

  The arguments, numbers and features of `tf_adadelta.Adadelta` (see its
  docstring and the README), as a Keras optimizer:

  >>> model.compile(optimizer=tf_adadelta.keras.Adadelta(1.0), loss="mse")

  State is Keras variables, in `variables` in the order of
  `keras.optimizers.Adadelta`'s: `iterations` (Keras's raw call counter), the
  learning rate (for a float rate), `skipped_steps` (with
  `skip_nonfinite_steps`), then, variables in the order of `build`, every
  `average` (`use_ema`), every `gradient_accumulator` (accumulation), and
  each variable's `accumulated_grad` and `accumulated_delta_var`. Keras's
  files save them by position, so files of Keras's Adadelta load into this
  face and back; loading a different number raises `ValueError` instead of
  dropping the state, and values loaded before the optimizer is built are
  kept until `build`.
  """

  def __init__(self,
               learning_rate: lr_lib.LearningRate = 0.001,
               rho: float = 0.95,
               epsilon: float = 1e-7,
               weight_decay: Optional[float] = None,
               clipnorm: Optional[float] = None,
               clipvalue: Optional[float] = None,
               global_clipnorm: Optional[float] = None,
               use_ema: bool = False,
               ema_momentum: float = 0.99,
               ema_overwrite_frequency: Optional[int] = None,
               loss_scale_factor: Optional[float] = None,
               gradient_accumulation_steps: Optional[int] = None,
               name: Optional[str] = None,
               *,
               jit_compile: Optional[bool] = None,
               skip_nonfinite_steps: bool = False,
               skip_gradients_aggregation: bool = False,
               sparse_updates: str = "keras",
               **kwargs):
    args = dict(locals())
    for unused in ("self", "kwargs", "__class__"):
      args.pop(unused, None)
    # Checked before Keras sees them, so both faces raise the same errors.
    # Without a name Keras names it as its own ("adadelta", "adadelta_1", ...).
    arguments.check(dict(args, name="adadelta" if name is None else name),
                    kwargs)
    if lr_lib.is_number(learning_rate):
      learning_rate = float(learning_rate)
    elif isinstance(learning_rate, tf.Variable):
      variable = learning_rate
      learning_rate = lambda: variable
    super().__init__(
        learning_rate=learning_rate, weight_decay=weight_decay,
        clipnorm=clipnorm, clipvalue=clipvalue,
        global_clipnorm=global_clipnorm, use_ema=use_ema,
        ema_momentum=ema_momentum,
        ema_overwrite_frequency=ema_overwrite_frequency,
        loss_scale_factor=loss_scale_factor,
        gradient_accumulation_steps=gradient_accumulation_steps, name=name)
    arguments.store(self, args)
    self.skipped_steps = None
    if skip_nonfinite_steps:
      self.skipped_steps = self.add_variable(
          (), initializer="zeros", dtype="int64",
          aggregation="only_first_replica", name="skipped_steps")
    table = slots_lib.SlotTable(make_slot=self._make_slot)
    exclusions = arguments.WeightDecayExclusions()
    self._tf_adadelta = _Untracked(
        table=table, exclusions=exclusions, pending_values=None,
        step=step_lib.Step(self, step_lib.StepState(
            slots=table, calls=self._iterations.value, applied=None,
            skipped=(self.skipped_steps.value if skip_nonfinite_steps
                     else None),
            learning_rate=lambda: self.learning_rate,
            uses_weight_decay=exclusions.uses_weight_decay,
            create_slots=self._create_slots)),
        reader=checkpoint_layouts.StateReader(
            self, table, checkpoint_layouts.KERAS_FACE,
            call_count=self._iterations,
            slot_names=lambda variable: step_lib.slot_names(self, variable)))

  def __dir__(self):
    # TensorFlow's checkpointer takes an object listing `get_slot_names` for
    # an OptimizerV2 with `tf.Variable` slots. These slots are Keras
    # variables, checkpointed as Keras's optimizers' are: in `variables`.
    return [n for n in super().__dir__() if n != "get_slot_names"]

  # --- Checkpoints of other layouts -----------------------------------------
  # A checkpoint may hold `tf_adadelta.Adadelta`'s state (slots through the
  # slot-variable protocol, `iterations`), Keras's Adadelta's (its slot lists
  # are ordered otherwise than this face's `_variables`) or this face's own.
  # TensorFlow hands what it cannot place to `_deferred_dependencies` and
  # `_create_or_restore_slot_variable`; `checkpoint_layouts` places it, this
  # face's own `_variables` included, by the build order.

  def _lookup_dependency(self, name, cached_dependencies=None):
    if name == "_variables":
      return None
    return super()._lookup_dependency(name, cached_dependencies)

  @property
  def _deferred_dependencies(self):
    deferred = super()._deferred_dependencies
    held = self.__dict__.get("_tf_adadelta")
    return deferred if held is None else held.reader.deferred_dependencies(
        deferred)

  def _create_or_restore_slot_variable(self, slot_variable_position, slot_name,
                                       variable, slot_variable_shape=None):
    del slot_variable_shape
    held = self._tf_adadelta
    return held.table.create_or_restore(
        slot_variable_position, held.reader.slot_name(slot_name), variable)

  # --- Keras's protocol -----------------------------------------------------
  # Not converted by AutoGraph (a user's `tf.function` and `fit`'s step
  # convert what they call): the step has no Python control flow on tensors,
  # and converting it and the slot creation, per call, made the first step of
  # ResNet-50's 214 variables take 6x as long as without.

  @tf.autograph.experimental.do_not_convert
  def build(self, variables: Sequence[Any]) -> None:
    """Creates the slots of `variables`, in their order (see `variables`)."""
    self._create_slots(list(variables))
    # Not an attribute Keras tracks: these are the model's variables.
    object.__setattr__(self, "_trainable_variables",
                       list(self._tf_adadelta.table.variables))
    self.built = True
    held = self._tf_adadelta
    if held.pending_values is not None:
      values, held.pending_values = held.pending_values, None
      # `fit` may build inside its traced step: assign once, now, rather
      # than as ops of that step.
      with tf.init_scope():
        self._assign_saved(values)

  @tf.autograph.experimental.do_not_convert
  def apply(self, grads, trainable_variables=None):
    """Applies one step: `grads` in the order of `trainable_variables`.

    Args:
      grads: Gradients, one per variable (None skips that variable).
      trainable_variables: The variables; if omitted, those of `build`.

    Returns:
      The raw `iterations` counter.
    """
    grads = list(grads)
    if trainable_variables is None:
      if not self.built:
        raise ValueError("When `trainable_variables` is omitted the optimizer "
                         "must already be built: call `build(variables)` or "
                         "pass `trainable_variables`.")
      trainable_variables = self._trainable_variables
    trainable_variables = list(trainable_variables)
    if len(grads) != len(trainable_variables):
      raise ValueError(f"Received {len(grads)} gradients for "
                       f"{len(trainable_variables)} variables; `grads` must "
                       "match `trainable_variables` one to one.")
    return self.apply_gradients(zip(grads, trainable_variables))

  @tf.autograph.experimental.do_not_convert
  def apply_gradients(self, grads_and_vars, *,
                      skip_gradients_aggregation: Optional[bool] = None):
    """Applies one step from `(gradient, variable)` pairs.

    Args:
      grads_and_vars: `(gradient, variable)` pairs, as for
        `tf_adadelta.Adadelta.apply_gradients`.
      skip_gradients_aggregation: Overrides the constructor's option.

    Returns:
      The raw `iterations` counter.
    """
    pairs = list(grads_and_vars)
    if not self.built:
      # Checked before building, so that a rejected first call creates
      # nothing; built in the order given (the order of `variables`).
      self._tf_adadelta.step.check(pairs)
      self._build_in_cross_replica([v for _, v in pairs])
    with keras.name_scope(self.name, caller=self):
      self._tf_adadelta.step.apply_gradients(pairs, skip_gradients_aggregation)
    return self._iterations

  def _build_in_cross_replica(self, variables):
    """`build` from a step, also one inside `strategy.run` (a custom loop)."""
    def build(_, variables):
      with keras.name_scope(self.name, caller=self):
        self.build(variables)

    distribution.in_cross_replica(build, list(variables))

  def finalize_variable_values(self, var_list):
    """With `use_ema`, sets each variable to its moving average."""
    self._tf_adadelta.step.finalize_variable_values(var_list)

  def exclude_from_weight_decay(self, var_list=None, var_names=None):
    """Excludes variables from weight decay, before the optimizer is built."""
    if self.built:
      raise ValueError("`exclude_from_weight_decay()` must be called before "
                       "the optimizer is built (before its first step).")
    self._tf_adadelta.exclusions.set(var_list, var_names)

  def get_slot_names(self):
    """Names of the slots this optimizer creates for each variable."""
    return step_lib.slot_names(self)

  def get_slot(self, var, slot_name: str):
    """Returns the slot `slot_name` of `var` (a Keras or TF variable).

    Raises:
      KeyError: `var` has no such slot (yet).
    """
    slot = self._tf_adadelta.table.get(var, slot_name)
    if slot is None:
      raise KeyError(f"No slot '{slot_name}' for variable "
                     f"'{getattr(var, 'name', var)}'. Slots: "
                     f"{self.get_slot_names()}.")
    return slot

  @property
  def learning_rate(self):
    return super().learning_rate

  @learning_rate.setter
  def learning_rate(self, value):
    # The checks of `tf_adadelta.Adadelta`; tensors and Keras variables go to
    # Keras's setter as they are (it assigns them to the rate's variable).
    if not (tf.is_tensor(value) or isinstance(value, keras.Variable)):
      lr_lib.check(value)
    keras.optimizers.Optimizer.learning_rate.fset(self, value)

  # Keras's names for two slot lists, read by Keras's own code
  # (`keras.callbacks.SwapEMAWeights`) and by code written for its optimizers.
  # Both are aligned with `_trainable_variables` and exist once built.

  @property
  def _model_variables_moving_average(self):
    return self._slot_list(step_lib.AVERAGE, "use_ema=True")

  @property
  def _accumulated_gradients(self):
    return self._slot_list(step_lib.GRADIENT_ACCUMULATOR,
                           "gradient_accumulation_steps")

  def _slot_list(self, slot_name, option):
    # AttributeError, so that `hasattr` (SwapEMAWeights's check) says no.
    if not self.built:
      raise AttributeError(f"Optimizer '{self.name}' is not built yet: its "
                           f"'{slot_name}' slots do not exist.")
    slots = [self._tf_adadelta.table.get(v, slot_name)
             for v in self._trainable_variables]
    if any(slot is None for slot in slots):
      raise AttributeError(
          f"Optimizer '{self.name}' has no '{slot_name}' slot for every "
          f"variable: it needs {option}, and a variable with "
          "`overwrite_with_gradient` has no moving average.")
    return slots

  def get_config(self) -> Dict[str, Any]:
    """The constructor arguments (Keras's Adadelta config, plus four)."""
    return arguments.get_config(self, self._learning_rate)

  @classmethod
  def from_config(cls, config, custom_objects=None) -> "Adadelta":
    """Creates an optimizer from `get_config()` (or a Keras Adadelta config)."""
    return cls(**arguments.from_config_args(config, custom_objects))

  @classmethod
  def from_keras(cls, keras_optimizer, variables=None) -> "Adadelta":
    """Continues a `keras.optimizers.Adadelta` run, for example in `fit`.

    >>> model.compile(optimizer=tf_adadelta.keras.Adadelta.from_keras(
    ...     model.optimizer, variables=model.trainable_variables), loss="mse")

    Args:
      keras_optimizer: A `keras.optimizers.Adadelta`, built or not.
      variables: Required when `keras_optimizer` is built: the variables it
        was built with, or copies of them, in the same order.

    Returns:
      A new optimizer with the Keras config; when `keras_optimizer` is built,
      also its step count and every slot, built on `variables`.

    Raises:
      TypeError: `keras_optimizer` is not a `keras.optimizers.Adadelta`.
      ValueError: `variables` is missing or does not match.
    """
    return keras_migration.from_keras(cls, keras_optimizer, variables)

  def save_own_variables(self, store):
    values = self._tf_adadelta.pending_values
    if values is None:
      values = [np.asarray(v.numpy()) for v in self.variables]
    for i, value in enumerate(values):
      store[str(i)] = value

  def load_own_variables(self, store):
    values = [np.asarray(store[str(i)]) for i in range(len(store.keys()))]
    if not self.built and len(values) > len(self.variables):
      # Slots do not exist yet (Keras builds lazily): keep the values until
      # `build` creates them.
      self._tf_adadelta.pending_values = values
      return
    self._assign_saved(values)

  # --- State ----------------------------------------------------------------

  def _assign_saved(self, values):
    own = self.variables
    unbuilt_count = len(own) - len(self._tf_adadelta.table.all_slots)
    if len(values) == unbuilt_count and len(values) < len(own):
      # Saved before any step: counters and rate only, slots stay initial.
      own = own[:unbuilt_count]
    if len(values) != len(own):
      raise ValueError(
          f"Cannot load the state of optimizer '{self.name}': it has "
          f"{len(own)} variables, the saved state has {len(values)}. The "
          "state was saved for another model or another configuration "
          "(slots depend on `use_ema` and `gradient_accumulation_steps`); "
          "nothing was loaded.")
    for variable, value in zip(own, values):
      if tuple(variable.shape) != tuple(value.shape):
        raise ValueError(
            f"Cannot load the state of optimizer '{self.name}': variable "
            f"'{variable.path}' has shape {tuple(variable.shape)}, the saved "
            f"value has shape {tuple(value.shape)}; nothing was loaded.")
    for variable, value in zip(own, values):
      variable.assign(value)

  def _assign_call_count(self, calls: int) -> None:
    self._tf_adadelta.step.assign_call_count(calls)

  def _create_slots(self, variables):
    variables = [validation.check_variable(v) for v in variables]
    if self.built:
      # As Keras's optimizers: Keras files store this state by position, in
      # the order of `build`, so a variable added later could not be told
      # apart from another of its shape when the file is loaded.
      unknown = [v for v in variables if not self._tf_adadelta.table.has(v)]
      if not unknown:
        return  # Built again with its own variables (LossScaleOptimizer).
      raise ValueError(
          f"Unknown variable '{variables_lib.path(unknown[0])}': optimizer "
          f"'{self.name}' was built with {len(self._trainable_variables)} "
          "variables and updates only those (its state is saved by "
          "position). For a new set of variables (for example after "
          "unfreezing layers), create a new optimizer; "
          "`tf_adadelta.Adadelta` takes new variables at any time.")
    self._tf_adadelta.reader.before_build(variables)
    # In the order of Keras's Adadelta (every average, every gradient
    # accumulator, then each variable's two Adadelta slots), so that the
    # positional formats (`.keras` and `.weights.h5` files, `BackupAndRestore`,
    # checkpoints' `_variables`) hold the same state at the same positions.
    for slot_group in checkpoint_layouts.KERAS_CREATION_ORDER:
      for variable in variables:
        names = [name for name in step_lib.slot_names(self, variable)
                 if name in slot_group]
        self._tf_adadelta.table.create(variable, names,
                                       step_lib.slot_initializers(variable))

  def _make_slot(self, variable, slot_name, initial_value, name):
    del name  # Keras variable names cannot hold "/".
    prefix = variables_lib.path(variable)
    # Keras calls initializers with `(shape, dtype)`; ours take no argument.
    return self.add_variable(
        tuple(variable.shape), initializer=lambda *_, **__: initial_value(),
        dtype=variable.dtype.name, name=f"{prefix}_{slot_name}")


class _Untracked:
  """Holds the engine's objects apart from Keras's attribute tracking."""

  def __init__(self, **items):
    self.__dict__.update(items)
