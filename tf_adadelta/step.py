"""The optimizer step: one call of `apply_gradients`, over state it is given.

In Keras's order (see the README): validate -> create missing slots -> sum
across replicas -> unscale -> (accumulate) -> clip -> weight decay ->
Adadelta -> EMA -> constraints -> count. This module knows nothing of
`tf.Module` or Keras: each face (`tf_adadelta.Adadelta`,
`tf_adadelta.keras.Adadelta`) owns its variables and hands them to `Step`
as a `StepState`; the arguments are read from the face (`Hyperparameters`
lists them), so a change such as `LossScaleOptimizer` clearing
`loss_scale_factor` is seen by the next step.

State changes only inside `merge_call`, in cross-replica context, through
`strategy.extended.update`; outside any strategy the default strategy takes
the same path, so eager, `tf.function`, XLA and every strategy share one code
path.
"""

import collections
import functools
from typing import Any, Callable, List, Optional, Protocol, Sequence

import tensorflow as tf

from tf_adadelta import adadelta_math
from tf_adadelta import distribution
from tf_adadelta import gradient_transforms as transforms
from tf_adadelta import slots as slots_lib
from tf_adadelta import tf_internals
from tf_adadelta import validation
from tf_adadelta import variables as variables_lib

ACCUMULATED_GRAD = "accumulated_grad"
ACCUMULATED_DELTA_VAR = "accumulated_delta_var"
AVERAGE = "average"
GRADIENT_ACCUMULATOR = "gradient_accumulator"


class Hyperparameters(Protocol):
  """The arguments a step reads (each face has them as attributes)."""
  rho: float
  epsilon: float
  weight_decay: Optional[float]
  clipnorm: Optional[float]
  clipvalue: Optional[float]
  global_clipnorm: Optional[float]
  use_ema: bool
  ema_momentum: float
  ema_overwrite_frequency: Optional[int]
  loss_scale_factor: Optional[float]
  gradient_accumulation_steps: Optional[int]
  jit_compile: Optional[bool]
  skip_nonfinite_steps: bool
  skip_gradients_aggregation: bool
  sparse_updates: str


class StepState:
  """The state a face gives its `Step`.

  Attributes:
    slots: The `slots.SlotTable` of every variable's slots.
    calls: int64 variable counting `apply_gradients` calls (Keras's
      `_iterations`; schedules see it).
    applied: With gradient accumulation, an int64 variable set to
      `calls // gradient_accumulation_steps` after each call (None if the
      face derives that count itself, or without accumulation).
    skipped: With `skip_nonfinite_steps`, the int64 count of skipped calls.
    learning_rate: A zero-argument callable, the rate in force now.
    uses_weight_decay: `fn(variable) -> bool`, the exclusions.
    create_slots: `fn(variables)`: creates the slots of new variables; called
      in cross-replica context.
  """

  def __init__(self, *, slots: slots_lib.SlotTable, calls: tf.Variable,
               applied: Optional[tf.Variable], skipped: Optional[tf.Variable],
               learning_rate: Callable[[], Any],
               uses_weight_decay: Callable[[Any], bool],
               create_slots: Callable[[List[Any]], None]):
    self.slots = slots
    self.calls = calls
    self.applied = applied
    self.skipped = skipped
    self.learning_rate = learning_rate
    self.uses_weight_decay = uses_weight_decay
    self.create_slots = create_slots


def slot_names(hyper: Hyperparameters, variable=None) -> List[str]:
  """The slots a variable gets, in the order they are created.

  A Keras variable with `overwrite_with_gradient` gets only the gradient
  accumulator (with accumulation), as in Keras.
  """
  if variable is not None and variables_lib.overwrites_with_gradient(variable):
    return [GRADIENT_ACCUMULATOR] if hyper.gradient_accumulation_steps else []
  names = [ACCUMULATED_GRAD, ACCUMULATED_DELTA_VAR]
  if hyper.use_ema:
    names.append(AVERAGE)
  if hyper.gradient_accumulation_steps:
    names.append(GRADIENT_ACCUMULATOR)
  return names


def slot_initializers(variable):
  """Initial values of each slot of `variable` (callables, for `SlotTable`)."""
  zeros = lambda: tf.zeros(variable.shape, variable.dtype)
  initializers = collections.defaultdict(lambda: zeros)
  # The first EMA step copies the variable; starting from a copy (not zeros)
  # also keeps `finalize_variable_values` harmless before it.
  initializers[AVERAGE] = lambda: tf.identity(variable)
  return initializers


# The slots of one variable, as the per-variable update function gets them.
_Slots = collections.namedtuple(
    "_Slots",
    ["accumulated_grad", "accumulated_delta_var", "accumulator", "average"])


def _shard_groups(variables) -> List[List[int]]:
  """Positions of the shards of each `ShardedVariable` given in two or more."""
  groups = collections.OrderedDict()
  for i, variable in enumerate(variables):
    container = tf_internals.sharded_container(variable)
    if container is not None:
      groups.setdefault(id(container), []).append(i)
  return [group for group in groups.values() if len(group) > 1]


class Step:
  """Applies Adadelta steps for one face, over the state it owns.

  Args:
    hyper: The face; its attributes are the arguments (`Hyperparameters`).
    state: The face's variables (`StepState`).
  """

  def __init__(self, hyper: Hyperparameters, state: StepState):
    self._hyper = hyper
    self._state = state
    self._compiled_updates = {}

  # --- Entry point ----------------------------------------------------------

  # Not converted by AutoGraph: the step is written with explicit `tf.cond`s,
  # and converting every function it calls, per call, is most of the time a
  # user's `tf.function` would otherwise spend tracing it.
  @tf.autograph.experimental.do_not_convert
  def apply_gradients(self, grads_and_vars,
                      skip_gradients_aggregation: Optional[bool] = None):
    """One step from `(gradient, variable)` pairs; see the faces' docstrings.

    Every check runs before any state changes; then slots are created for
    variables seen for the first time, and the step is applied (or, with
    `skip_nonfinite_steps` and a non-finite gradient, counted as skipped).
    """
    hyper, state = self._hyper, self._state
    grads, user_vars, tf_vars, without_grads, shape_checks = self._checked(
        grads_and_vars)
    if not user_vars:
      return
    # As Keras, variables without a gradient get slots too (EMA averages them,
    # and `finalize_variable_values` finds their average).
    new = [v for v in user_vars + without_grads if not state.slots.has(v)]
    if new:
      distribution.in_cross_replica(lambda _, vs: state.create_slots(vs), new)

    overwritten = [i for i, v in enumerate(user_vars)
                   if variables_lib.overwrites_with_gradient(v)]
    if skip_gradients_aggregation is None:
      skip_gradients_aggregation = hyper.skip_gradients_aggregation
    if not skip_gradients_aggregation:
      grads = distribution.all_reduce(grads, overwritten)
    overwrite = [(grads[i], tf_vars[i]) for i in overwritten]
    kept = [i for i in range(len(grads)) if i not in set(overwritten)]
    grads = [grads[i] for i in kept]
    constraints = [variables_lib.constraint(user_vars[i]) for i in kept]
    tf_vars = [tf_vars[i] for i in kept]

    grads = transforms.unscale(grads, hyper.loss_scale_factor)
    grads = [transforms.cast_to(g, v.dtype) for g, v in zip(grads, tf_vars)]
    # A tensor, not the variable: the update runs on each variable's device
    # (a parameter server's), which cannot read a resource held elsewhere.
    lr = tf.convert_to_tensor(state.learning_rate())
    apply_now = self._is_applying_step()
    clip_scale = self._global_clip_scale(grads, tf_vars, apply_now)
    finite = None
    if hyper.skip_nonfinite_steps:
      finite = transforms.all_finite(grads + [g for g, _ in overwrite])
    distribution.in_cross_replica(
        self._apply_or_skip, _Batch(grads, tf_vars, constraints, overwrite),
        lr, apply_now, clip_scale, finite, shape_checks)

  def check(self, grads_and_vars) -> None:
    """Runs the checks of `apply_gradients`, changing nothing.

    For a face that builds its state before the first step: it checks first.

    Raises:
      ValueError, TypeError: As `apply_gradients` would.
    """
    self._checked(grads_and_vars)

  @staticmethod
  def _checked(grads_and_vars):
    grads, user_vars, without_grads = validation.check_grads_and_vars(
        grads_and_vars)
    tf_vars = [variables_lib.unwrap(v) for v in user_vars]
    shape_checks = []
    if user_vars:
      grads, shape_checks = validation.ensure_shapes(grads, tf_vars)
    return grads, user_vars, tf_vars, without_grads, shape_checks

  def assign_call_count(self, calls: int) -> None:
    """Sets the raw call counter, and the count of applied steps it implies."""
    self._state.calls.assign(calls)
    if self._state.applied is not None:
      self._state.applied.assign(
          calls // self._hyper.gradient_accumulation_steps)

  @tf.autograph.experimental.do_not_convert
  def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
    """With `use_ema`, sets each variable to its moving average."""
    if not self._hyper.use_ema:
      return
    var_list = [validation.check_variable(v) for v in var_list]
    averages = [self._state.slots.get_variable(v, AVERAGE) for v in var_list]

    pairs = [(variables_lib.unwrap(var), variables_lib.unwrap(average))
             for var, average in zip(var_list, averages) if average is not None]

    def overwrite(strategy):
      for var, average in pairs:
        distribution.update(strategy, var, lambda v, a: v.assign(a), average)

    if (tf.distribute.in_cross_replica_context() or
        not tf.distribute.has_strategy()):
      # Outside a strategy's step (Keras's `fit` calls this after training,
      # out of the strategy's scope): a distributed variable assigns all its
      # copies itself.
      for var, average in pairs:
        var.assign(average)
    else:
      distribution.in_cross_replica(overwrite)

  # --- Decisions taken once per call -----------------------------------------

  def _is_applying_step(self):
    """With accumulation: whether this call applies (a scalar bool tensor)."""
    steps = self._hyper.gradient_accumulation_steps
    if not steps:
      return None
    return tf.equal((self._state.calls + 1) % steps, 0)

  def _applied_steps(self):
    """The optimizer steps so far (Keras's public `iterations`)."""
    steps = self._hyper.gradient_accumulation_steps
    calls = self._state.calls
    return calls // steps if steps else calls

  def _effective_gradient(self, grad, variable, apply_now):
    """The gradient an applying step uses: with accumulation, the mean."""
    if apply_now is None:
      return grad
    accumulator = self._state.slots.get_variable(variable, GRADIENT_ACCUMULATOR)
    return transforms.average_with_accumulator(
        grad, accumulator, self._hyper.gradient_accumulation_steps)

  def _global_clip_scale(self, grads, variables, apply_now):
    """Clipping factors that need several gradients: one per variable.

    With `global_clipnorm`, the factor of all gradients together. With
    `clipnorm`, that of the shards of each sharded variable together, so the
    norm is the whole variable's, as on one device; other variables are
    clipped alone in `_clip`. None where no such factor applies.
    """
    hyper = self._hyper
    if hyper.global_clipnorm is not None:
      groups, clipnorm = [list(range(len(variables)))], hyper.global_clipnorm
    elif hyper.clipnorm is not None:
      groups, clipnorm = _shard_groups(variables), hyper.clipnorm
    else:
      groups = []
    scales = [None] * len(variables)
    if not groups or not variables:
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

  def _decays(self, variable) -> bool:
    return (self._hyper.weight_decay is not None and
            self._state.uses_weight_decay(variable))

  def _is_lazy(self, grad) -> bool:
    return (self._hyper.sparse_updates == "lazy" and
            isinstance(grad, tf.IndexedSlices))

  def _compiles_update(self, grad, applying: Optional[bool]) -> bool:
    """Whether the update of a variable with `grad` runs compiled by XLA.

    The automatic choice (`jit_compile=None`), from the benchmark in the
    README: a plain step is one pass of TensorFlow's fused kernel, which XLA's
    code does not beat; each of weight decay, clipping and EMA adds passes over
    memory that one compiled function folds into a single one. Sparse updates
    stay uncompiled: XLA recompiles for every new number of gradient rows
    (with a fixed number, `jit_compile=True` is faster; see the README).
    """
    hyper = self._hyper
    if hyper.jit_compile is not None:
      return hyper.jit_compile
    if isinstance(grad, tf.IndexedSlices):
      return False
    if hyper.use_ema:
      return True
    # An accumulation micro-step is a single `assign_add` either way.
    return applying is not False and (
        hyper.weight_decay is not None or hyper.clipnorm is not None or
        hyper.clipvalue is not None or hyper.global_clipnorm is not None)

  def _compiled_update(self, var, grad, applying):
    """`_update_variable` compiled by XLA, one function per shape and kind.

    Each function is traced once per setting; a single function traced for
    every shape of a model would make TensorFlow warn of frequent retracing.
    """
    key = (tuple(var.shape), var.dtype, isinstance(grad, tf.IndexedSlices),
           applying)
    function = self._compiled_updates.get(key)
    if function is None:
      function = tf.function(
          functools.partial(self._update_variable, compiled=True),
          jit_compile=True, autograph=False)
      self._compiled_updates[key] = function
    return function

  # --- Per-variable work (inside `strategy.extended.update`) ----------------

  def _clip(self, grad, clip_scale):
    hyper = self._hyper
    if clip_scale is not None:
      if hyper.global_clipnorm is not None and not self._is_lazy(grad):
        # Keras's global clipping returns dense gradients (duplicate rows
        # summed), so the step after it is the dense one.
        grad = transforms.to_dense(grad)
      return transforms.scale(grad, clip_scale)
    if hyper.clipnorm is not None:
      return transforms.clip_by_norm(grad, hyper.clipnorm)
    if hyper.clipvalue is not None:
      return transforms.clip_by_value(grad, hyper.clipvalue)
    return grad

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
    hyper = self._hyper
    lr = tf.cast(lr, var.dtype)

    def step(g):
      g = self._clip(g, clip_scale)
      lazy = self._is_lazy(g)
      if lazy:
        g = transforms.sum_duplicates(g)
      if decay:
        adadelta_math.weight_decay(
            var, tf.cast(hyper.weight_decay, var.dtype), lr,
            g.indices if lazy else None)
      adadelta_math.apply(var, slots.accumulated_grad,
                          slots.accumulated_delta_var, g, lr, hyper.rho,
                          hyper.epsilon, lazy=lazy, compiled=compiled)

    if applying is None:
      step(grad)
    elif applying:
      step(transforms.average_with_accumulator(
          grad, slots.accumulator, hyper.gradient_accumulation_steps))
      _reset(slots.accumulator)
    else:
      slots.accumulator.assign_add(transforms.to_dense(grad))
    if slots.average is not None:
      self._update_average(var, slots.average, *ema)

  def _update_average(self, var, average, keep_history, overwrite):
    """EMA of one variable (Keras's formula), then the optional overwrite."""
    # `tf.constant`, not `tf.cast`: a cast of a Python float rounds it to
    # float32 first, which Keras's float64 average does not.
    momentum = tf.cast(keep_history, var.dtype) * tf.constant(
        self._hyper.ema_momentum, var.dtype)
    average.assign(momentum * average + (1 - momentum) * var)
    if overwrite is not None:
      tf.cond(overwrite, lambda: var.assign(average).op, tf.no_op)

  # --- The step in cross-replica context ------------------------------------

  def _apply_or_skip(self, strategy, batch, lr, apply_now, clip_scale, finite,
                     shape_checks):
    """The whole step, or with `skip_nonfinite_steps` only a skip count.

    Nothing changes before `shape_checks` (see `validation.ensure_shapes`)
    have passed on every replica.
    """
    checks = [t for check in shape_checks
              for t in strategy.experimental_local_results(check)]

    def apply_step():
      self._apply_in_cross_replica(strategy, batch, lr, apply_now, clip_scale)

    def skip_step():
      self._state.skipped.assign_add(1)

    with tf.control_dependencies(checks):
      if finite is None:
        apply_step()
        return
      # The replicas summed the same gradients, so their flags agree; taking
      # them all keeps every copy of the state identical even if they do not.
      finite = tf.reduce_all(
          tf.stack(strategy.experimental_local_results(finite)))
      tf.cond(finite, apply_step, skip_step)

  def _apply_in_cross_replica(self, strategy, batch, lr, apply_now,
                              clip_scale):
    hyper, table = self._hyper, self._state.slots
    ema = None
    if hyper.use_ema:
      applied = self._applied_steps()
      keep_history = tf.not_equal(applied, 0)
      overwrite = None
      if hyper.ema_overwrite_frequency:
        overwrite = tf.equal((applied + 1) % hyper.ema_overwrite_frequency, 0)
      ema = (keep_history, overwrite)

    def update_all(applying):
      updated = set()
      for grad, var, constraint, var_clip_scale in zip(
          batch.grads, batch.variables, batch.constraints, clip_scale):
        slots = table.variables_of(var)
        update_fn = (self._compiled_update(var, grad, applying)
                     if self._compiles_update(grad, applying)
                     else self._update_variable)
        if constraint is not None and applying is not False:
          update_fn = _then_constrain(update_fn, constraint)
        distribution.update(
            strategy, var, update_fn, grad,
            _Slots(slots[ACCUMULATED_GRAD], slots[ACCUMULATED_DELTA_VAR],
                   slots.get(GRADIENT_ACCUMULATOR), slots.get(AVERAGE)),
            lr, applying, var_clip_scale, self._decays(var), ema)
        updated.add(variables_lib.key(var))
      for grad, var in batch.overwrite:
        distribution.update(strategy, var, _overwrite_with_gradient, grad,
                            table.get_variable(var, GRADIENT_ACCUMULATOR),
                            applying)
        updated.add(variables_lib.key(var))
      if hyper.use_ema:
        # Keras averages every variable the optimizer was built with, also
        # those without a gradient in this call.
        for var in table.variables:
          average = table.get_variable(var, AVERAGE)
          if average is not None and variables_lib.key(var) not in updated:
            distribution.update(strategy, variables_lib.unwrap(var),
                                self._update_average, average, *ema)

    if apply_now is None:
      update_all(None)
    else:
      # One `tf.cond` for all variables rather than one per variable: a
      # micro-step then costs the accumulator updates and little else. The
      # flag is read again here, as `apply_now` may be a per-replica value.
      tf.cond(self._is_applying_step(), lambda: update_all(True),
              lambda: update_all(False))
    self._count_call()

  def _count_call(self):
    state = self._state
    state.calls.assign_add(1)
    if state.applied is not None:
      state.applied.assign(state.calls // self._hyper.gradient_accumulation_steps)


_Batch = collections.namedtuple(
    "_Batch", ["grads", "variables", "constraints", "overwrite"])


def _reset(accumulator):
  """Zeroes a gradient accumulator in a buffer it owns.

  Not `zeros_like`: graph optimization folds that into a constant which the
  accumulator would then share, so the next micro-step's `assign_add` would
  first copy it. A zero that is not a constant keeps the fill in this step.
  """
  zero = tf.raw_ops.Empty(shape=[], dtype=accumulator.dtype, init=True)
  accumulator.assign(tf.fill(tf.shape(accumulator), zero))


def _then_constrain(update_fn, constraint):
  """`update_fn`, then `var = constraint(var)` (after EMA, as Keras does)."""

  def update_and_constrain(var, *args):
    update_fn(var, *args)
    var.assign(constraint(var))

  return update_and_constrain


def _overwrite_with_gradient(var, grad, accumulator, applying):
  """Keras's rule for `overwrite_with_gradient` variables (float8 state).

  Without accumulation the variable becomes its gradient. With it, micro-steps
  keep the elementwise maximum of the gradients in the accumulator, and the
  applying step assigns the maximum with the last gradient and resets it.
  """
  grad = tf.cast(transforms.to_dense(grad), var.dtype)
  if applying is None:
    var.assign(grad)
  elif applying:
    var.assign(tf.maximum(grad, accumulator))
    _reset(accumulator)
  else:
    accumulator.assign(tf.maximum(grad, accumulator))
