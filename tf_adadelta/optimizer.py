"""`tf_adadelta.Adadelta`: Keras's Adadelta as a `tf.Module`.

The face for custom training loops: it owns its state as `tf.Variable`s
(tracked by `tf.Module`, saved by `tf.train.Checkpoint` with the slot-variable
protocol) and runs `step.Step` over it.
"""

import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import tensorflow as tf

from tf_adadelta import arguments
from tf_adadelta import checkpoint_layouts
from tf_adadelta import keras_migration
from tf_adadelta import learning_rate as lr_lib
from tf_adadelta import slots as slots_lib
from tf_adadelta import step as step_lib
from tf_adadelta import tf_internals
from tf_adadelta import validation

ACCUMULATED_GRAD = step_lib.ACCUMULATED_GRAD
ACCUMULATED_DELTA_VAR = step_lib.ACCUMULATED_DELTA_VAR
AVERAGE = step_lib.AVERAGE
GRADIENT_ACCUMULATOR = step_lib.GRADIENT_ACCUMULATOR


def _module_name(name: str) -> str:
  """`tf.Module` names must be Python identifiers; Keras's need not be."""
  cleaned = re.sub(r"\W", "_", name)
  return cleaned if cleaned[:1].isalpha() or cleaned[:1] == "_" else f"_{cleaned}"


class Adadelta(tf.Module):
  """Optimizer that implements the Adadelta algorithm.

  A `tf.Module` with the arguments, defaults and numbers of
  `keras.optimizers.Adadelta`. Its state is `tf.Variable`s (`iterations`, the
  learning rate, and per variable the slots `accumulated_grad` and
  `accumulated_delta_var`, plus `average` with `use_ema` and
  `gradient_accumulator` with `gradient_accumulation_steps`), so
  `tf.train.Checkpoint` and `tf.saved_model` track it. Slots are created on
  first use, inside `tf.function` too, and restored from checkpoints by the
  identity of their variable.

  Under a `tf.distribute` strategy, gradients are summed across replicas
  before they are unscaled, clipped and applied.

  Example:

  >>> opt = tf_adadelta.Adadelta(learning_rate=1.0)
  >>> var = tf.Variable([1.0, 2.0])
  >>> with tf.GradientTape() as tape:
  ...   loss = tf.reduce_sum(var ** 2)
  >>> opt.apply_gradients(zip(tape.gradient(loss, [var]), [var]))

  Args:
    learning_rate: A float, a `keras.optimizers.schedules.LearningRateSchedule`
      (called with the raw step count), a callable taking no arguments, or a
      float `tf.Variable`. Defaults to 0.001.
    rho: The decay rate, in [0, 1]. Defaults to 0.95.
    epsilon: Added inside both square roots, > 0. Defaults to 1e-7.
    weight_decay: If set, decoupled weight decay: each applied step first does
      `var -= var * weight_decay * learning_rate`.
    clipnorm: If set, each gradient is clipped to this L2 norm.
    clipvalue: If set, each gradient element is clipped to
      `[-clipvalue, clipvalue]`.
    global_clipnorm: If set, all gradients are scaled together so that their
      global L2 norm is at most this value. At most one clipping mode is set.
    use_ema: Keep an exponential moving average of every variable.
    ema_momentum: Momentum of that average, in [0, 1]. Defaults to 0.99.
    ema_overwrite_frequency: With `use_ema`, overwrite the variables with
      their averages every this many steps (None: only through
      `finalize_variable_values`).
    loss_scale_factor: If set, gradients are divided by it (multiply the loss
      with `scale_loss`).
    gradient_accumulation_steps: If set (an integer >= 2), variables are
      updated every this many calls, with the mean of the gradients since the
      last update.
    name: The optimizer's name. Defaults to "adadelta".
    jit_compile: Compile the per-variable update with XLA: True, False, or
      None for the automatic choice: compiled when weight decay, clipping or
      EMA is set and the gradient is dense, else TensorFlow's fused kernel
      (see the README's benchmark). The whole step can always run inside a
      caller's `tf.function(jit_compile=True)`.
    skip_nonfinite_steps: If True, a call whose gradients (summed across
      replicas and unscaled) hold a NaN or an Inf changes nothing (variables,
      slots, averages, accumulators, `iterations`) and adds one to the int64
      variable `skipped_steps`. Defaults to False, as in Keras (such a step
      writes NaN into the variables).
    skip_gradients_aggregation: If True, gradients given inside
      `strategy.run` are taken as already summed across replicas.
    sparse_updates: How `tf.IndexedSlices` gradients update a variable.
      "keras" (the default): Keras's numbers; the accumulators of every row
      decay each step. "lazy": TensorFlow 1's `ResourceSparseApplyAdadelta`
      semantics, at a cost that grows with the rows in the gradient, not the
      table: duplicate indices are summed, then only those rows of the
      variable and its accumulators change (weight decay too; clipping is
      Keras's, and `global_clipnorm` keeps the gradient sparse). EMA still
      averages whole variables, and with gradient accumulation the applied
      gradient is the dense mean, so those steps are not lazy.
    **kwargs: Not accepted; unknown arguments raise `TypeError`.

  Raises:
    TypeError: An argument has the wrong type, or is not recognized.
    ValueError: An argument is out of range, or several clipping modes are set.
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
               name: str = "adadelta",
               *,
               jit_compile: Optional[bool] = None,
               skip_nonfinite_steps: bool = False,
               skip_gradients_aggregation: bool = False,
               sparse_updates: str = "keras",
               **kwargs):
    args = dict(locals())
    for unused in ("self", "kwargs", "__class__"):
      args.pop(unused, None)
    arguments.check(args, kwargs)
    arguments.store(self, args)
    super().__init__(name=_module_name(name))
    self._optimizer_name = name

    counter = dict(dtype=tf.int64, trainable=False,
                   aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    with self.name_scope:
      self.iterations = tf.Variable(0, name="iterations", **counter)
      if gradient_accumulation_steps:
        self.micro_iterations = tf.Variable(0, name="micro_iterations",
                                            **counter)
      if skip_nonfinite_steps:
        self.skipped_steps = tf.Variable(0, name="skipped_steps", **counter)
      if lr_lib.is_number(learning_rate):
        learning_rate = tf.Variable(
            float(learning_rate), name="learning_rate", dtype=tf.float32,
            trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self._learning_rate = learning_rate

    # Slots are saved through the slot-variable protocol, not as attributes,
    # so these bypass automatic tracking; `tf.Module.variables` still sees the
    # list. The step is not state: it is not tracked either.
    table = slots_lib.SlotTable()
    exclusions = arguments.WeightDecayExclusions()
    object.__setattr__(self, "_slot_table", table)
    object.__setattr__(self, "_slot_variables", table.all_slots)
    object.__setattr__(self, "_exclusions", exclusions)
    object.__setattr__(self, "_state_reader", checkpoint_layouts.StateReader(
        self, table, checkpoint_layouts.MODULE, call_count=self._raw_step(),
        slot_names=lambda variable: step_lib.slot_names(self, variable),
        derived_counters=([self.iterations] if gradient_accumulation_steps
                          else [])))
    object.__setattr__(self, "_step", step_lib.Step(self, step_lib.StepState(
        slots=table, calls=self._raw_step(),
        applied=self.iterations if gradient_accumulation_steps else None,
        skipped=getattr(self, "skipped_steps", None),
        learning_rate=lambda: self.learning_rate,
        uses_weight_decay=exclusions.uses_weight_decay,
        create_slots=self.build)))

  # --- Public surface -------------------------------------------------------

  @property
  def name(self) -> str:
    return self._optimizer_name

  @property
  def learning_rate(self):
    """The learning rate in force now (a variable for a float rate)."""
    return lr_lib.current(self._learning_rate, self._raw_step())

  @learning_rate.setter
  def learning_rate(self, value: lr_lib.LearningRate):
    lr_lib.check(value)
    if lr_lib.is_number(value):
      if not isinstance(self._learning_rate, tf.Variable):
        raise TypeError(
            "This optimizer was created with a learning rate schedule or "
            "callable, so a float `learning_rate` cannot be assigned; set a "
            "schedule, a callable or a tf.Variable instead.")
      self._learning_rate.assign(float(value))
    else:
      self._learning_rate = value

  @tf.autograph.experimental.do_not_convert
  def build(self, variables: Sequence[tf.Variable]) -> None:
    """Creates the slots of `variables` now rather than on first use.

    Args:
      variables: Float `tf.Variable`s or Keras variables.

    Raises:
      TypeError: An element is not a float `tf.Variable` or Keras variable.
      ValueError: A checkpoint restored before holds the state of other
        variables (another number, or other shapes).
    """
    variables = [validation.check_variable(v) for v in variables]
    self._state_reader.before_build(variables)
    for variable in variables:
      self._slot_table.create(variable, step_lib.slot_names(self, variable),
                              step_lib.slot_initializers(variable))

  @property
  def built(self) -> bool:
    return bool(self._slot_table.variables)

  def get_slot_names(self) -> List[str]:
    """Names of the slots this optimizer creates for each variable."""
    return step_lib.slot_names(self)

  def get_slot(self, var, slot_name: str) -> tf.Variable:
    """Returns the slot `slot_name` of `var` (a variable, Keras's or not).

    Raises:
      KeyError: `var` has no such slot (yet).
    """
    slot = self._slot_table.get(var, slot_name)
    if slot is None:
      raise KeyError(f"No slot '{slot_name}' for variable "
                     f"'{getattr(var, 'name', var)}'. Slots: "
                     f"{self.get_slot_names()}; a variable gets its slots on "
                     "its first update or from `build`.")
    return slot

  @tf.autograph.experimental.do_not_convert
  def apply_gradients(self, grads_and_vars: Iterable[Tuple[Any, tf.Variable]],
                      *, skip_gradients_aggregation: Optional[bool] = None
                      ) -> tf.Variable:
    """Applies one optimizer step.

    Args:
      grads_and_vars: An iterable of `(gradient, variable)` pairs. A variable
        is a float `tf.Variable` or a Keras variable. A gradient may be a
        tensor, `tf.IndexedSlices`, a NumPy array, or None (that variable is
        skipped, with a warning).
      skip_gradients_aggregation: Overrides the constructor's option for this
        call: inside `strategy.run`, take the gradients as already summed.

    Returns:
      The `iterations` variable.

    Raises:
      TypeError: A variable is not a float `tf.Variable` or Keras variable, or
        a gradient is not a float tensor.
      ValueError: Every gradient is None, a gradient's shape does not match
        its variable, or a variable is given twice. Nothing is changed.
    """
    self._step.apply_gradients(grads_and_vars, skip_gradients_aggregation)
    return self.iterations

  @tf.autograph.experimental.do_not_convert
  def apply(self, grads: Sequence[Any],
            trainable_variables: Optional[Sequence[tf.Variable]] = None
            ) -> tf.Variable:
    """Keras's `apply`: `grads` in the order of `trainable_variables`.

    Args:
      grads: Gradients, one per variable.
      trainable_variables: The variables; if omitted, the variables the
        optimizer was built with, in that order.

    Returns:
      The `iterations` variable.

    Raises:
      ValueError: No variables are given and the optimizer is not built, or
        the number of gradients does not match.
    """
    grads = list(grads)
    if trainable_variables is None:
      trainable_variables = self._slot_table.variables
      if not trainable_variables:
        raise ValueError("When `trainable_variables` is omitted the optimizer "
                         "must already be built: call `build(variables)` or "
                         "pass `trainable_variables`.")
    trainable_variables = list(trainable_variables)
    if len(grads) != len(trainable_variables):
      raise ValueError(f"Received {len(grads)} gradients for "
                       f"{len(trainable_variables)} variables; `grads` must "
                       "match `trainable_variables` one to one.")
    return self.apply_gradients(zip(grads, trainable_variables))

  def minimize(self, loss: Union[tf.Tensor, Callable[[], tf.Tensor]],
               var_list: Union[Sequence[tf.Variable],
                               Callable[[], Sequence[tf.Variable]]],
               tape: Optional[tf.GradientTape] = None) -> tf.Variable:
    """Computes the gradients of `loss` and applies them.

    Args:
      loss: A tensor computed under `tape`, or a zero-argument callable.
      var_list: The variables to update, or a callable returning them.
      tape: The `tf.GradientTape` that recorded `loss` (required when `loss`
        is a tensor).

    Returns:
      The `iterations` variable.

    Raises:
      ValueError: `loss` is a tensor and no `tape` is given.
    """
    if tape is None:
      if not callable(loss):
        raise ValueError("`tape` is required when `loss` is a tensor; pass "
                         "the tf.GradientTape that computed it, or pass "
                         "`loss` as a callable.")
      with tf.GradientTape() as tape:
        if not callable(var_list):
          tape.watch(var_list)
        loss = loss()
    if callable(var_list):
      var_list = var_list()
    var_list = list(var_list)
    grads = tape.gradient(loss, var_list)
    return self.apply_gradients(zip(grads, var_list))

  def scale_loss(self, loss):
    """Multiplies `loss` by `loss_scale_factor` (unchanged when unset)."""
    if self.loss_scale_factor is None:
      return loss
    return loss * self.loss_scale_factor

  def exclude_from_weight_decay(self, var_list: Optional[Sequence[tf.Variable]] = None,
                                var_names: Optional[Sequence[str]] = None
                                ) -> None:
    """Excludes variables from weight decay, before the first step.

    Args:
      var_list: Variables to exclude.
      var_names: Substrings (regular expressions); a variable whose name
        contains any of them is excluded.

    Raises:
      ValueError: The optimizer has already been built.
    """
    if self.built:
      raise ValueError("`exclude_from_weight_decay()` must be called before "
                       "the optimizer is built (before its first step).")
    self._exclusions.set(var_list, var_names)

  def finalize_variable_values(self, var_list: Sequence[tf.Variable]) -> None:
    """With `use_ema`, sets each variable to its moving average.

    Args:
      var_list: The variables to finalize (built ones).
    """
    self._step.finalize_variable_values(var_list)

  def get_config(self) -> Dict[str, Any]:
    """The constructor arguments, as `keras.optimizers.Adadelta` writes them."""
    return arguments.get_config(self, self._learning_rate)

  @classmethod
  def from_config(cls, config: Dict[str, Any], custom_objects=None
                  ) -> "Adadelta":
    """Creates an optimizer from `get_config()` (or a Keras Adadelta config)."""
    return cls(**arguments.from_config_args(config, custom_objects))

  def __reduce__(self):
    # Pickling carries the configuration only, as Keras's optimizers do; the
    # state belongs in checkpoints.
    return _from_config, (type(self), self.get_config())

  @classmethod
  def from_keras(cls, keras_optimizer,
                 variables: Optional[Sequence[tf.Variable]] = None
                 ) -> "Adadelta":
    """Continues a `keras.optimizers.Adadelta` run with this class.

    Copies the Keras optimizer's config and, when it is built, its step count
    and every slot, so training goes on with the same numbers.

    Args:
      keras_optimizer: A `keras.optimizers.Adadelta`.
      variables: Required when `keras_optimizer` is built: the variables it was
        built with, or copies of them, in the same order.

    Returns:
      A new `Adadelta`, built on `variables` when `keras_optimizer` is built.

    Raises:
      TypeError: `keras_optimizer` is not a `keras.optimizers.Adadelta`.
      ValueError: `variables` is missing or does not match.
    """
    return keras_migration.from_keras(cls, keras_optimizer, variables)

  # --- State ----------------------------------------------------------------

  def _assign_call_count(self, calls: int) -> None:
    self._step.assign_call_count(calls)

  def _raw_step(self) -> tf.Variable:
    """The count of `apply` calls, which schedules see (Keras's `_iterations`)."""
    if self.gradient_accumulation_steps:
      return self.micro_iterations
    return self.iterations

  # --- Checkpoint slot protocol ---------------------------------------------

  def _create_or_restore_slot_variable(self, slot_variable_position, slot_name,
                                       variable, slot_variable_shape=None):
    del slot_variable_shape
    return self._slot_table.create_or_restore(
        slot_variable_position, self._state_reader.slot_name(slot_name),
        variable)

  # Checkpoints of `tf_adadelta.keras.Adadelta` and `keras.optimizers.Adadelta`
  # name their state otherwise; TensorFlow defers those names here, and the
  # reader restores them (`checkpoint_layouts`).

  @property
  def _deferred_dependencies(self):
    deferred = super()._deferred_dependencies
    reader = self.__dict__.get("_state_reader")
    return deferred if reader is None else reader.deferred_dependencies(
        deferred)

  # A SavedModel holds the slots as ordinary children (`slots.SlotExport`)
  # instead of slot references, so it loads without this library; checkpoints
  # keep the slot protocol. TensorFlow finds slot owners by a method name
  # (`tf_internals.SLOT_OWNER_METHOD`), so `dir` hides it while a SavedModel
  # is written (from the SavedModel traversal until the next checkpoint one).

  def _trackable_children(self, save_type=tf_internals.SaveType.CHECKPOINT,
                          **kwargs):
    children = super()._trackable_children(save_type, **kwargs)
    exporting = save_type == tf_internals.SaveType.SAVEDMODEL
    object.__setattr__(self, "_exporting_slots", exporting)
    if exporting:
      children[slots_lib.EXPORTED_SLOTS] = slots_lib.SlotExport(
          self._slot_table)
    return children

  def __dir__(self):
    names = super().__dir__()
    if getattr(self, "_exporting_slots", False):
      names = [name for name in names
               if name != tf_internals.SLOT_OWNER_METHOD]
    return names

  def _lookup_dependency(self, name, cached_dependencies=None):
    if name == slots_lib.EXPORTED_SLOTS:
      # Restoring a SavedModel's checkpoint: its slots, matched by identity.
      return slots_lib.ExportedSlotsRestorer(self)
    return super()._lookup_dependency(name, cached_dependencies)


def _from_config(cls, config):
  return cls.from_config(config)
