"""`tf_adadelta.Adadelta`: Keras's Adadelta as a `tf.Module`."""

import collections
import functools
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import tensorflow as tf

from tf_adadelta import adadelta_math
from tf_adadelta import distribution
from tf_adadelta import gradient_transforms as transforms
from tf_adadelta import keras_migration
from tf_adadelta import learning_rate as lr_lib
from tf_adadelta import slots as slots_lib
from tf_adadelta import validation

ACCUMULATED_GRAD = "accumulated_grad"
ACCUMULATED_DELTA_VAR = "accumulated_delta_var"
AVERAGE = "average"
GRADIENT_ACCUMULATOR = "gradient_accumulator"

# The slots of one variable, as the per-variable update function receives them.
_Slots = collections.namedtuple(
    "_Slots",
    ["accumulated_grad", "accumulated_delta_var", "accumulator", "average"])


class _Untracked:
  """A plain holder, so compiled functions are not exported as attributes."""

  def __init__(self, value):
    self.value = value


def _shard_groups(variables) -> List[List[int]]:
  """Positions of the shards of each `ShardedVariable` given in two or more."""
  groups = collections.OrderedDict()
  for i, variable in enumerate(variables):
    container = getattr(variable, "_sharded_container", None)
    if container is not None and container() is not None:
      groups.setdefault(id(container()), []).append(i)
  return [group for group in groups.values() if len(group) > 1]


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
    validation.check_constructor_args(
        learning_rate=learning_rate, rho=rho, epsilon=epsilon,
        weight_decay=weight_decay, clipnorm=clipnorm, clipvalue=clipvalue,
        global_clipnorm=global_clipnorm, use_ema=use_ema,
        ema_momentum=ema_momentum,
        ema_overwrite_frequency=ema_overwrite_frequency,
        loss_scale_factor=loss_scale_factor,
        gradient_accumulation_steps=gradient_accumulation_steps, name=name,
        jit_compile=jit_compile, skip_nonfinite_steps=skip_nonfinite_steps,
        sparse_updates=sparse_updates, kwargs=kwargs)
    super().__init__(name=_module_name(name))
    self._optimizer_name = name
    self.rho = float(rho)
    self.epsilon = float(epsilon)
    self.weight_decay = weight_decay
    self.clipnorm = clipnorm
    self.clipvalue = clipvalue
    self.global_clipnorm = global_clipnorm
    self.use_ema = bool(use_ema)
    self.ema_momentum = ema_momentum
    self.ema_overwrite_frequency = ema_overwrite_frequency
    self.loss_scale_factor = loss_scale_factor
    self.gradient_accumulation_steps = gradient_accumulation_steps
    self.jit_compile = jit_compile
    self.skip_nonfinite_steps = bool(skip_nonfinite_steps)
    self.skip_gradients_aggregation = bool(skip_gradients_aggregation)
    self.sparse_updates = sparse_updates
    self._excluded_keys = frozenset()
    self._excluded_pattern = None

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
    # list.
    table = slots_lib.SlotTable()
    object.__setattr__(self, "_slot_table", table)
    object.__setattr__(self, "_slot_variables", table.all_slots)
    compiled = tf.function(
        functools.partial(self._update_variable, compiled=True),
        jit_compile=True, autograph=False)
    object.__setattr__(self, "_compiled_update", _Untracked(compiled))

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

  def build(self, variables: Sequence[tf.Variable]) -> None:
    """Creates the slots of `variables` now rather than on first use.

    Args:
      variables: Float `tf.Variable`s.

    Raises:
      TypeError: An element is not a float `tf.Variable`.
    """
    variables = [validation.check_variable(v) for v in variables]
    names = self._slot_names()
    for variable in variables:
      zeros = lambda v=variable: tf.zeros(v.shape, v.dtype)
      initializers = {name: zeros for name in names}
      # The first EMA step copies the variable; starting from a copy (not
      # zeros) also keeps `finalize_variable_values` harmless before it.
      initializers[AVERAGE] = lambda v=variable: tf.identity(v)
      self._slot_table.create(variable, names, initializers)

  @property
  def built(self) -> bool:
    return bool(self._slot_table.variables)

  def get_slot_names(self) -> List[str]:
    """Names of the slots this optimizer creates for each variable."""
    return self._slot_names()

  def get_slot(self, var: tf.Variable, slot_name: str) -> tf.Variable:
    """Returns the slot `slot_name` of `var`.

    Raises:
      KeyError: `var` has no such slot (yet).
    """
    var = validation.unwrap_variable(var)
    # A `ShardedVariable`'s slot is its shards' slots as one (see `slots`).
    slot = (self._slot_table.get(var, slot_name)
            if isinstance(var, (tf.Variable, slots_lib.ShardedVariable))
            else None)
    if slot is None:
      raise KeyError(f"No slot '{slot_name}' for variable "
                     f"'{getattr(var, 'name', var)}'. Slots: "
                     f"{self._slot_names()}; a variable gets its slots on "
                     "its first update or from `build`.")
    return slot

  def apply_gradients(self, grads_and_vars: Iterable[Tuple[Any, tf.Variable]],
                      *, skip_gradients_aggregation: Optional[bool] = None
                      ) -> tf.Variable:
    """Applies one optimizer step.

    Args:
      grads_and_vars: An iterable of `(gradient, variable)` pairs. A gradient
        may be a tensor, `tf.IndexedSlices`, a NumPy array, or None (that
        variable is skipped, with a warning).
      skip_gradients_aggregation: Overrides the constructor's option for this
        call: inside `strategy.run`, take the gradients as already summed.

    Returns:
      The `iterations` variable.

    Raises:
      TypeError: A variable is not a float `tf.Variable`, or a gradient is not
        a float tensor.
      ValueError: Every gradient is None, a gradient's shape does not match
        its variable, or a variable is given twice. Nothing is changed.
    """
    grads, variables, without_grads = validation.check_grads_and_vars(
        grads_and_vars)
    if not variables:
      return self.iterations
    grads, shape_checks = validation.ensure_shapes(grads, variables)
    # As Keras, variables without a gradient get slots too (EMA averages them,
    # and `finalize_variable_values` finds their average).
    new = [v for v in variables + without_grads
           if not self._slot_table.has(v)]
    if new:
      distribution.in_cross_replica(lambda _, vs: self.build(vs), new)
    if skip_gradients_aggregation is None:
      skip_gradients_aggregation = self.skip_gradients_aggregation
    if not skip_gradients_aggregation:
      grads = distribution.all_reduce_sum(grads)
    grads = transforms.unscale(grads, self.loss_scale_factor)
    grads = [transforms.cast_to(g, v.dtype) for g, v in zip(grads, variables)]
    # A tensor, not the variable: the update runs on each variable's device
    # (a parameter server's), which cannot read a resource held elsewhere.
    lr = tf.convert_to_tensor(self.learning_rate)
    apply_now = self._is_applying_step()
    clip_scale = self._global_clip_scale(grads, variables, apply_now)
    finite = transforms.all_finite(grads) if self.skip_nonfinite_steps else None
    distribution.in_cross_replica(self._apply_or_skip, grads, variables, lr,
                                  apply_now, clip_scale, finite, shape_checks)
    return self.iterations

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
    self._excluded_keys = frozenset(
        slots_lib.variable_key(validation.unwrap_variable(v))
        for v in (var_list or []))
    self._excluded_pattern = (re.compile("|".join(sorted(set(var_names))))
                              if var_names else None)

  def finalize_variable_values(self, var_list: Sequence[tf.Variable]) -> None:
    """With `use_ema`, sets each variable to its moving average.

    Args:
      var_list: The variables to finalize (built ones).
    """
    if not self.use_ema:
      return
    var_list = [validation.check_variable(v) for v in var_list]

    def overwrite(strategy, variables):
      for var in variables:
        distribution.update(strategy, var, lambda v, a: v.assign(a),
                            self.get_slot(var, AVERAGE))

    distribution.in_cross_replica(overwrite, var_list)

  def get_config(self) -> Dict[str, Any]:
    """The constructor arguments, as `keras.optimizers.Adadelta` writes them."""
    return {
        "name": self.name,
        "learning_rate": lr_lib.serialize(self._learning_rate),
        "weight_decay": self.weight_decay,
        "clipnorm": self.clipnorm,
        "global_clipnorm": self.global_clipnorm,
        "clipvalue": self.clipvalue,
        "use_ema": self.use_ema,
        "ema_momentum": self.ema_momentum,
        "ema_overwrite_frequency": self.ema_overwrite_frequency,
        "loss_scale_factor": self.loss_scale_factor,
        "gradient_accumulation_steps": self.gradient_accumulation_steps,
        "rho": self.rho,
        "epsilon": self.epsilon,
        "jit_compile": self.jit_compile,
        "skip_nonfinite_steps": self.skip_nonfinite_steps,
        "skip_gradients_aggregation": self.skip_gradients_aggregation,
        "sparse_updates": self.sparse_updates,
    }

  @classmethod
  def from_config(cls, config: Dict[str, Any], custom_objects=None
                  ) -> "Adadelta":
    """Creates an optimizer from `get_config()` (or a Keras Adadelta config)."""
    config = dict(config)
    if "learning_rate" in config:
      config["learning_rate"] = lr_lib.deserialize(config["learning_rate"],
                                                   custom_objects)
    return cls(**config)

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

  # --- Checkpoint slot protocol ---------------------------------------------

  def _create_or_restore_slot_variable(self, slot_variable_position, slot_name,
                                       variable):
    return self._slot_table.create_or_restore(slot_variable_position,
                                              slot_name, variable)

  # A SavedModel holds the slots as ordinary children (`slots.SlotExport`)
  # instead of slot references, so it loads without this library; checkpoints
  # keep the slot protocol. TensorFlow finds slot owners with
  # `"get_slot_names" in dir(obj)`, so `dir` hides it while a SavedModel is
  # written (from the SavedModel traversal until the next checkpoint one).

  def _trackable_children(self, save_type=slots_lib.trackable_base.SaveType
                          .CHECKPOINT, **kwargs):
    children = super()._trackable_children(save_type, **kwargs)
    exporting = save_type == slots_lib.trackable_base.SaveType.SAVEDMODEL
    object.__setattr__(self, "_exporting_slots", exporting)
    if exporting:
      children[slots_lib.EXPORTED_SLOTS] = slots_lib.SlotExport(
          self._slot_table)
    return children

  def __dir__(self):
    names = super().__dir__()
    if getattr(self, "_exporting_slots", False):
      names = [name for name in names if name != "get_slot_names"]
    return names

  def _lookup_dependency(self, name, cached_dependencies=None):
    if name == slots_lib.EXPORTED_SLOTS:
      # Restoring a SavedModel's checkpoint: its slots, matched by identity.
      return slots_lib.ExportedSlotsRestorer(self)
    return super()._lookup_dependency(name, cached_dependencies)

  # --- The step -------------------------------------------------------------

  def _slot_names(self) -> List[str]:
    names = [ACCUMULATED_GRAD, ACCUMULATED_DELTA_VAR]
    if self.use_ema:
      names.append(AVERAGE)
    if self.gradient_accumulation_steps:
      names.append(GRADIENT_ACCUMULATOR)
    return names

  def _raw_step(self) -> tf.Variable:
    """The count of `apply` calls, which schedules see (Keras's `_iterations`)."""
    if self.gradient_accumulation_steps:
      return self.micro_iterations
    return self.iterations

  def _is_applying_step(self):
    """With accumulation: whether this call applies (a scalar bool tensor)."""
    if not self.gradient_accumulation_steps:
      return None
    steps = self.gradient_accumulation_steps
    return tf.equal((self.micro_iterations + 1) % steps, 0)

  def _effective_gradient(self, grad, variable, apply_now):
    """The gradient an applying step uses: with accumulation, the mean."""
    if apply_now is None:
      return grad
    accumulator = self._slot_table.get(variable, GRADIENT_ACCUMULATOR)
    return transforms.average_with_accumulator(
        grad, accumulator, self.gradient_accumulation_steps)

  def _global_clip_scale(self, grads, variables, apply_now):
    """Clipping factors that need several gradients: one per variable.

    With `global_clipnorm`, the factor of all gradients together. With
    `clipnorm`, that of the shards of each sharded variable together, so the
    norm is the whole variable's, as on one device; other variables are
    clipped alone in `_clip`. None where no such factor applies.
    """
    if self.global_clipnorm is not None:
      groups, clipnorm = [list(range(len(variables)))], self.global_clipnorm
    elif self.clipnorm is not None:
      groups, clipnorm = _shard_groups(variables), self.clipnorm
    else:
      groups = []
    scales = [None] * len(variables)
    if not groups:
      return scales

    def compute(gradient_of):
      return [transforms.global_clip_scale([gradient_of(i) for i in group],
                                           clipnorm) for group in groups]

    if apply_now is None:
      values = compute(lambda i: grads[i])
    else:
      dtypes = [transforms.norm_dtype([grads[i] for i in group])
                for group in groups]
      values = tf.cond(
          apply_now,
          lambda: compute(lambda i: self._effective_gradient(
              grads[i], variables[i], apply_now)),
          lambda: [tf.ones([], dtype) for dtype in dtypes])
    for group, value in zip(groups, values):
      for i in group:
        scales[i] = value
    return scales

  def _use_weight_decay(self, variable) -> bool:
    if self.weight_decay is None:
      return False
    if slots_lib.variable_key(variable) in self._excluded_keys:
      return False
    if self._excluded_pattern is not None and self._excluded_pattern.search(
        variable.name):
      return False
    return True

  def _is_lazy(self, grad) -> bool:
    return (self.sparse_updates == "lazy" and
            isinstance(grad, tf.IndexedSlices))

  def _clip(self, grad, clip_scale):
    if clip_scale is not None:
      if self.global_clipnorm is not None and not self._is_lazy(grad):
        # Keras's global clipping returns dense gradients (duplicate rows
        # summed), so the step after it is the dense one.
        grad = transforms.to_dense(grad)
      return transforms.scale(grad, clip_scale)
    if self.clipnorm is not None:
      return transforms.clip_by_norm(grad, self.clipnorm)
    if self.clipvalue is not None:
      return transforms.clip_by_value(grad, self.clipvalue)
    return grad

  def _compiles_update(self, grad, applying: Optional[bool]) -> bool:
    """Whether the update of a variable with `grad` runs compiled by XLA.

    The automatic choice (`jit_compile=None`), from the benchmark in the
    README: a plain step is one pass of TensorFlow's fused kernel, which XLA's
    code does not beat; each of weight decay, clipping and EMA adds passes over
    memory that one compiled function folds into a single one. Sparse updates
    stay uncompiled: XLA recompiles for every new number of gradient rows
    (with a fixed number, `jit_compile=True` is faster; see the README).
    """
    if self.jit_compile is not None:
      return self.jit_compile
    if isinstance(grad, tf.IndexedSlices):
      return False
    if self.use_ema:
      return True
    # An accumulation micro-step is a single `assign_add` either way.
    return applying is not False and (
        self.weight_decay is not None or self.clipnorm is not None or
        self.clipvalue is not None or self.global_clipnorm is not None)

  def _update_variable(self, var, grad, slots, lr, applying, clip_scale,
                       decay, ema, compiled=False):
    """The whole per-variable step: clip, decay, Adadelta; or accumulate.

    With gradient accumulation, `applying` (a Python bool) tells an applying
    step from a micro-step; without, it is None.

    Then, with `use_ema`, the average of `var` (`ema` holds the arguments of
    `_update_average`): it depends on this variable alone, so doing it here
    rather than in a loop of its own saves a pass over memory when compiled.
    Runs once per copy of `var` (inside `strategy.extended.update`), and is
    the function that `jit_compile` compiles (then with `compiled=True`).
    """
    lr = tf.cast(lr, var.dtype)

    def step(g):
      g = self._clip(g, clip_scale)
      lazy = self._is_lazy(g)
      if lazy:
        g = transforms.sum_duplicates(g)
      if decay:
        adadelta_math.weight_decay(
            var, tf.cast(self.weight_decay, var.dtype), lr,
            g.indices if lazy else None)
      adadelta_math.apply(var, slots.accumulated_grad,
                          slots.accumulated_delta_var, g, lr, self.rho,
                          self.epsilon, lazy=lazy, compiled=compiled)

    if applying is None:
      step(grad)
    elif applying:
      step(transforms.average_with_accumulator(
          grad, slots.accumulator, self.gradient_accumulation_steps))
      # Not `zeros_like`: graph optimization folds that into a constant which
      # the accumulator would then share, so the next micro-step's
      # `assign_add` would first copy it. A zero that is not a constant keeps
      # the fill in this step, into a buffer the accumulator owns.
      zero = tf.raw_ops.Empty(shape=[], dtype=slots.accumulator.dtype,
                              init=True)
      slots.accumulator.assign(tf.fill(tf.shape(slots.accumulator), zero))
    else:
      slots.accumulator.assign_add(transforms.to_dense(grad))
    if slots.average is not None:
      self._update_average(var, slots.average, *ema)

  def _update_average(self, var, average, keep_history, overwrite):
    """EMA of one variable (Keras's formula), then the optional overwrite."""
    # `tf.constant`, not `tf.cast`: a cast of a Python float rounds it to
    # float32 first, which Keras's float64 average does not.
    momentum = tf.cast(keep_history, var.dtype) * tf.constant(
        self.ema_momentum, var.dtype)
    average.assign(momentum * average + (1 - momentum) * var)
    if overwrite is not None:
      tf.cond(overwrite, lambda: var.assign(average).op, tf.no_op)

  def _apply_or_skip(self, strategy, grads, variables, lr, apply_now,
                     clip_scale, finite, shape_checks):
    """The whole step, or with `skip_nonfinite_steps` only a skip count.

    Nothing changes before `shape_checks` (see `validation.ensure_shapes`)
    have passed on every replica.
    """
    checks = [t for check in shape_checks
              for t in strategy.experimental_local_results(check)]

    def apply_step():
      self._apply_in_cross_replica(strategy, grads, variables, lr, apply_now,
                                   clip_scale)

    def skip_step():
      self.skipped_steps.assign_add(1)

    with tf.control_dependencies(checks):
      if finite is None:
        apply_step()
        return
      # The replicas summed the same gradients, so their flags agree; taking
      # them all keeps every copy of the state identical even if they do not.
      finite = tf.reduce_all(
          tf.stack(strategy.experimental_local_results(finite)))
      tf.cond(finite, apply_step, skip_step)

  def _apply_in_cross_replica(self, strategy, grads, variables, lr, apply_now,
                              clip_scale):
    ema = None
    if self.use_ema:
      keep_history = tf.not_equal(self.iterations, 0)
      overwrite = None
      if self.ema_overwrite_frequency:
        overwrite = tf.equal(
            (self.iterations + 1) % self.ema_overwrite_frequency, 0)
      ema = (keep_history, overwrite)

    def update_all(applying):
      updated = set()
      for grad, var, var_clip_scale in zip(grads, variables, clip_scale):
        slots = self._slot_table.slots_for(var)
        update_fn = (self._compiled_update.value
                     if self._compiles_update(grad, applying)
                     else self._update_variable)
        distribution.update(
            strategy, var, update_fn, grad,
            _Slots(slots[ACCUMULATED_GRAD], slots[ACCUMULATED_DELTA_VAR],
                   slots.get(GRADIENT_ACCUMULATOR), slots.get(AVERAGE)),
            lr, applying, var_clip_scale, self._use_weight_decay(var), ema)
        updated.add(slots_lib.variable_key(var))
      if self.use_ema:
        # Keras averages every variable the optimizer was built with, also
        # those without a gradient in this call.
        for var in self._slot_table.variables:
          if slots_lib.variable_key(var) not in updated:
            distribution.update(strategy, var, self._update_average,
                                self._slot_table.get(var, AVERAGE), *ema)

    if apply_now is None:
      update_all(None)
    else:
      # One `tf.cond` for all variables rather than one per variable: a
      # micro-step then costs the accumulator updates and little else. The
      # flag is read again here, as `apply_now` may be a per-replica value.
      tf.cond(self._is_applying_step(), lambda: update_all(True),
              lambda: update_all(False))
    if self.gradient_accumulation_steps:
      self.micro_iterations.assign_add(1)
      self.iterations.assign(self.micro_iterations //
                             self.gradient_accumulation_steps)
    else:
      self.iterations.assign_add(1)
