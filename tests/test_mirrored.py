"""MirroredStrategy over two logical CPUs equals one device on the global batch.

Every test trains the model of `distributed_model` with each replica on half of
the global batch and compares every number the optimizer owns (variables,
slots, `iterations`) with a run on one device over the whole batch. Slots are
compared too because Adadelta's step is nearly invariant to the gradient's
scale: a mean instead of a sum would move the variables very little but
changes `accumulated_grad` fourfold.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_adadelta
from tests import distributed_model as dm
from tests import variable_kinds

RTOL = 1e-5
ATOL = 1e-10

STRATEGY = dm.mirrored_strategy()

# Thresholds between the norms of the summed gradient and of each replica's
# (or the mean): the global norm is 6.6 summed, 3.0 and 4.0 per replica; the
# bias's norm 5.4 summed, 2.3 and 3.1 per replica. A wrong order or a mean
# instead of a sum clips differently.
CLIP = {"clipnorm": 2.5, "global_clipnorm": 5.0}


def _adadelta(**kwargs):
  kwargs.setdefault("learning_rate", 1.0)
  return lambda: tf_adadelta.Adadelta(**kwargs)


def _with_decay_exclusion():
  optimizer = tf_adadelta.Adadelta(learning_rate=1.0, weight_decay=0.1)
  optimizer.exclude_from_weight_decay(var_names=["bias"])
  return optimizer


FEATURES = {
    "plain": _adadelta(),
    "clipnorm": _adadelta(clipnorm=CLIP["clipnorm"]),
    "clipvalue": _adadelta(clipvalue=1.0),
    "global_clipnorm": _adadelta(global_clipnorm=CLIP["global_clipnorm"]),
    "weight_decay": _with_decay_exclusion,
    "ema_overwrite": _adadelta(use_ema=True, ema_momentum=0.9,
                               ema_overwrite_frequency=3),
    "accumulation": _adadelta(gradient_accumulation_steps=2),
    "accumulation_global_clipnorm": _adadelta(
        gradient_accumulation_steps=2,
        global_clipnorm=CLIP["global_clipnorm"]),
    "loss_scale": _adadelta(loss_scale_factor=64.0),
    "schedule": _adadelta(
        learning_rate=keras.optimizers.schedules.ExponentialDecay(
            1.0, decay_steps=1, decay_rate=0.5)),
    "callable_lr": _adadelta(learning_rate=lambda: 0.5),
    "jit_compile": _adadelta(jit_compile=True),
    "lazy_sparse": _adadelta(sparse_updates="lazy", weight_decay=0.1,
                             global_clipnorm=CLIP["global_clipnorm"]),
    "lazy_sparse_jit_compile": _adadelta(sparse_updates="lazy",
                                         jit_compile=True),
}


def _distributed_batch(strategy=STRATEGY):
  """Replica i gets the i-th half of the global batch."""
  batch = dm.data()
  count = strategy.num_replicas_in_sync

  def value_fn(context):
    part = dm.shard(batch, context.replica_id_in_sync_group, count)
    return tuple(tf.constant(a) for a in part)

  return strategy.experimental_distribute_values_from_function(value_fn)


def train_mirrored(optimizer_fn, steps=dm.STEPS, use_function=True,
                   replica_step=dm.step, kind=variable_kinds.TF,
                   **apply_kwargs):
  with STRATEGY.scope():
    variables = dm.make_variables(kind)
    optimizer = optimizer_fn()
  inputs = _distributed_batch()

  def distributed_step(batch):
    return STRATEGY.run(
        lambda *b: replica_step(optimizer, variables, *b, **apply_kwargs),
        args=batch)

  if use_function:
    distributed_step = tf.function(distributed_step)
  for _ in range(steps):
    distributed_step(inputs)
  return variables, optimizer


def assert_state_close(actual, expected):
  assert actual.keys() == expected.keys()
  for key in expected:
    np.testing.assert_allclose(actual[key], expected[key], rtol=RTOL,
                               atol=ATOL, err_msg=key)


def assert_replicas_agree(variables, optimizer):
  """Every copy of every mirrored variable and slot holds the same value."""
  mirrored = [dm.unwrap(v) for v in variables] + [
      optimizer.get_slot(v, n) for v in variables
      for n in optimizer.get_slot_names()] + [optimizer.iterations]
  for v in mirrored:
    copies = [c.numpy() for c in STRATEGY.experimental_local_results(v)]
    assert len(copies) == 2
    np.testing.assert_array_equal(copies[0], copies[1], err_msg=v.name)


@pytest.mark.parametrize("kind", variable_kinds.KINDS)
@pytest.mark.parametrize("feature", sorted(FEATURES))
def test_feature_equals_one_device(feature, kind):
  """Keras variables under the strategy equal `tf.Variable`s on one device."""
  optimizer_fn = FEATURES[feature]
  variables, optimizer = train_mirrored(optimizer_fn, kind=kind)
  expected = dm.state(*dm.train_one_device(optimizer_fn))
  assert_state_close(dm.state(variables, optimizer), expected)
  assert_replicas_agree(variables, optimizer)
  steps = dm.STEPS // (optimizer.gradient_accumulation_steps or 1)
  assert int(optimizer.iterations.numpy()) == steps


def test_eager_strategy_run_equals_one_device():
  optimizer_fn = _adadelta(global_clipnorm=CLIP["global_clipnorm"],
                           use_ema=True, ema_overwrite_frequency=2)
  variables, optimizer = train_mirrored(optimizer_fn, steps=2,
                                        use_function=False)
  expected = dm.state(*dm.train_one_device(optimizer_fn, steps=2))
  assert_state_close(dm.state(variables, optimizer), expected)


@pytest.mark.parametrize("clip", ["clipnorm", "global_clipnorm"])
def test_clipping_applies_to_the_summed_gradient(clip):
  """The clip bounds the global-batch gradient, as Keras on one device does.

  Keras 3 on TensorFlow clips each replica's gradient and sums afterwards; the
  second half of this test shows that order gives different numbers here, so
  the first half can tell the two apart.
  """
  clip_value = CLIP[clip]
  # Dense gradients: Keras densifies `tf.IndexedSlices` when it clips by the
  # global norm, so only dense gradients compare with it in both modes.
  variables, optimizer = train_mirrored(_adadelta(**{clip: clip_value}),
                                        replica_step=dm.dense_step)

  keras_vars, keras_opt = dm.train_one_device(
      lambda: keras.optimizers.Adadelta(learning_rate=1.0,
                                        **{clip: clip_value}),
      step_fn=dm.dense_step)
  for actual, expected in zip(variables, keras_vars):
    np.testing.assert_allclose(actual.numpy(), expected.numpy(), rtol=RTOL)
  for i, v in enumerate(variables):
    np.testing.assert_allclose(
        optimizer.get_slot(v, "accumulated_grad").numpy(),
        keras_opt._accumulated_grads[i].numpy(), rtol=RTOL, atol=ATOL)

  # Clipping each half's gradient before the sum (Keras 3's order).
  clip_fn = {
      "clipnorm": lambda gs: [tf.clip_by_norm(g, clip_value) for g in gs],
      "global_clipnorm": lambda gs: tf.clip_by_global_norm(gs, clip_value)[0],
  }[clip]
  local_vars = dm.make_variables()
  local_opt = tf_adadelta.Adadelta(learning_rate=1.0)
  batch = dm.data()
  for _ in range(dm.STEPS):
    halves = []
    for index in range(2):
      with tf.GradientTape() as tape:
        loss = dm.loss_fn(local_vars, *dm.shard(batch, index, 2))
      halves.append(clip_fn([tf.convert_to_tensor(g)
                             for g in tape.gradient(loss, local_vars)]))
    local_opt.apply_gradients(
        zip([a + b for a, b in zip(*halves)], local_vars))
  ours, clipped_first = dm.state(variables, optimizer), dm.state(
      local_vars, local_opt)
  assert not all(np.allclose(ours[k], clipped_first[k], rtol=100 * RTOL)
                 for k in ours)


def test_indexed_slices_are_summed_across_replicas():
  """The table's gradient stays `tf.IndexedSlices` through the all-reduce."""
  seen = []

  def replica_step(optimizer, variables, x, ids, y):
    with tf.GradientTape() as tape:
      loss = dm.loss_fn(variables, x, ids, y)
    grads = tape.gradient(loss, variables)
    seen.append(type(grads[1]))
    optimizer.apply_gradients(zip(grads, variables))

  variables, optimizer = train_mirrored(_adadelta(), replica_step=replica_step)
  assert tf.IndexedSlices in seen
  expected = dm.state(*dm.train_one_device(_adadelta()))
  assert_state_close(dm.state(variables, optimizer), expected)
  # Rows never looked up keep their value (the update is a scatter).
  np.testing.assert_array_equal(variables[1].numpy()[2],
                                dm.initial_values()["table"][2])


@pytest.mark.parametrize("where", ["constructor", "apply_gradients"])
def test_skip_gradients_aggregation_takes_gradients_as_summed(where):
  """With the option set, the caller's own all-reduce is the only sum."""

  def replica_step(optimizer, variables, x, ids, y):
    with tf.GradientTape() as tape:
      loss = dm.loss_fn(variables, x, ids, y)
    grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, variables)]
    context = tf.distribute.get_replica_context()
    grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    kwargs = {"skip_gradients_aggregation": True}
    optimizer.apply_gradients(zip(grads, variables),
                              **(kwargs if where == "apply_gradients" else {}))

  optimizer_fn = _adadelta(skip_gradients_aggregation=where == "constructor")
  variables, optimizer = train_mirrored(optimizer_fn, replica_step=replica_step)
  expected = dm.state(*dm.train_one_device(_adadelta(), step_fn=dm.dense_step))
  assert_state_close(dm.state(variables, optimizer), expected)


def test_cross_replica_context_applies_gradients_as_given():
  """Outside `strategy.run` the given gradients are applied to every copy."""
  with STRATEGY.scope():
    variables = dm.make_variables()
    optimizer = tf_adadelta.Adadelta(learning_rate=1.0,
                                     clipnorm=CLIP["clipnorm"])
  ref_vars = dm.make_variables()
  ref_opt = tf_adadelta.Adadelta(learning_rate=1.0, clipnorm=CLIP["clipnorm"])
  batch = dm.data()

  @tf.function
  def cross_replica_apply(grads):
    optimizer.apply_gradients(zip(grads, variables))

  for _ in range(3):
    with tf.GradientTape() as tape:
      loss = dm.loss_fn(ref_vars, *batch)
    grads = tape.gradient(loss, ref_vars)
    ref_opt.apply_gradients(zip(grads, ref_vars))
    with STRATEGY.scope():
      cross_replica_apply(grads)
  assert_state_close(dm.state(variables, optimizer),
                     dm.state(ref_vars, ref_opt))
  assert_replicas_agree(variables, optimizer)
  assert int(optimizer.iterations.numpy()) == 3


def test_slots_are_created_lazily_inside_tf_function_and_mirrored():
  optimizer_fn = _adadelta(use_ema=True, gradient_accumulation_steps=2)
  with STRATEGY.scope():
    variables = dm.make_variables()
    optimizer = optimizer_fn()
  assert not optimizer.built
  inputs = _distributed_batch()

  @tf.function
  def distributed_step(batch):
    STRATEGY.run(lambda *b: dm.step(optimizer, variables, *b), args=batch)

  distributed_step(inputs)
  assert optimizer.built
  for v in variables:
    for name in ["accumulated_grad", "accumulated_delta_var", "average",
                 "gradient_accumulator"]:
      slot = optimizer.get_slot(v, name)
      assert isinstance(slot, tf.distribute.DistributedValues), name
      copies = STRATEGY.experimental_local_results(slot)
      assert [c.device.split("/")[-1] for c in copies] == ["device:CPU:0",
                                                           "device:CPU:1"]
      # The slot of one replica's copy of the variable is the same slot.
      local_var = STRATEGY.experimental_local_results(v)[1]
      assert optimizer.get_slot(local_var, name) is slot
  for counter in [optimizer.iterations, optimizer.micro_iterations]:
    assert isinstance(counter, tf.distribute.DistributedValues)
  # Training on from the lazily built state still equals one device.
  for _ in range(dm.STEPS - 1):
    distributed_step(inputs)
  assert_state_close(dm.state(variables, optimizer),
                     dm.state(*dm.train_one_device(optimizer_fn)))


def _checkpoint(variables, optimizer):
  return tf.train.Checkpoint(
      model=tf.train.Checkpoint(
          **{f"v{i}": v for i, v in enumerate(variables)}),
      optimizer=optimizer)


@pytest.mark.parametrize("kind", variable_kinds.KINDS)
@pytest.mark.parametrize("restore_under", ["one_device", "mirrored"])
def test_checkpoint_from_mirrored_restores_elsewhere(restore_under, kind,
                                                     tmp_path):
  """Saved under MirroredStrategy after 2 steps, restored, trained 2 more."""
  optimizer_fn = _adadelta(use_ema=True, gradient_accumulation_steps=2)
  variables, optimizer = train_mirrored(optimizer_fn, steps=2, kind=kind)
  path = _checkpoint(variables, optimizer).write(str(tmp_path / "ckpt"))
  scope = (STRATEGY.scope() if restore_under == "mirrored" else
           tf.distribute.get_strategy().scope())
  with scope:
    restored_vars = [variable_kinds.make(kind, tf.zeros_like(v), name)
                     for name, v in dm.initial_values().items()]
    restored_opt = optimizer_fn()
  # Restored before the first step: the slots take the saved values when
  # they are created.
  _checkpoint(restored_vars, restored_opt).read(
      path).assert_existing_objects_matched()
  batch = dm.data()
  if restore_under == "mirrored":
    inputs = _distributed_batch()
    for _ in range(2):
      STRATEGY.run(lambda *b: dm.step(restored_opt, restored_vars, *b),
                   args=inputs)
  else:
    for _ in range(2):
      dm.step(restored_opt, restored_vars, *batch)
  assert_state_close(dm.state(restored_vars, restored_opt),
                     dm.state(*dm.train_one_device(optimizer_fn)))


def test_checkpoint_from_one_device_restores_under_mirrored(tmp_path):
  optimizer_fn = _adadelta(global_clipnorm=CLIP["global_clipnorm"])
  variables, optimizer = dm.train_one_device(optimizer_fn, steps=2)
  path = _checkpoint(variables, optimizer).write(str(tmp_path / "ckpt"))
  restored_vars, restored_opt = train_mirrored(optimizer_fn, steps=0)
  _checkpoint(restored_vars, restored_opt).read(
      path).assert_existing_objects_matched()
  inputs = _distributed_batch()
  for _ in range(2):
    STRATEGY.run(lambda *b: dm.step(restored_opt, restored_vars, *b),
                 args=inputs)
  assert_state_close(dm.state(restored_vars, restored_opt),
                     dm.state(*dm.train_one_device(optimizer_fn)))
  assert_replicas_agree(restored_vars, restored_opt)


def test_whole_replica_step_compiles_with_xla():
  """The step a TPU replica would run, compiled as one XLA cluster.

  On one device (a TPU cannot run here), with every decision taken on tensor
  values: accumulation, global clipping, EMA overwrite, weight decay, a
  schedule and `tf.IndexedSlices`.
  """
  optimizer_fn = _adadelta(
      gradient_accumulation_steps=2, global_clipnorm=CLIP["global_clipnorm"],
      use_ema=True, ema_overwrite_frequency=2, weight_decay=0.01,
      learning_rate=keras.optimizers.schedules.ExponentialDecay(
          1.0, decay_steps=1, decay_rate=0.5))
  variables = dm.make_variables()
  optimizer = optimizer_fn()
  compiled = tf.function(lambda *b: dm.step(optimizer, variables, *b),
                         jit_compile=True)
  batch = dm.data()
  for _ in range(dm.STEPS):
    compiled(*batch)
  actual = dm.state(variables, optimizer)
  expected = dm.state(*dm.train_one_device(optimizer_fn))
  assert actual.keys() == expected.keys()
  for key in expected:
    # Here XLA also computes the model's gradients (its `tanh` differs from
    # TensorFlow's in the last bits), and an accumulated mean of two nearly
    # opposite gradients magnifies that in its own element; so the tolerance
    # is relative to each tensor's scale, not to each element.
    np.testing.assert_allclose(
        actual[key], expected[key], rtol=RTOL,
        atol=RTOL * np.max(np.abs(expected[key])), err_msg=key)


@pytest.mark.parametrize("accumulation", [None, 2])
def test_overwrite_with_gradient_takes_the_replicas_maximum(accumulation):
  """A float8 scale variable becomes the elementwise max of the replicas' values.

  Replica 0 gives [1, 5] and replica 1 gives [3, 2] on every step; with
  accumulation the applying step assigns the maximum over both micro-steps.
  The other variable is trained as usual and must equal one device.
  """
  with STRATEGY.scope():
    scale = keras.Variable(np.zeros([2], np.float32), name="scale")
    scale.overwrite_with_gradient = True
    weight = keras.Variable(np.ones([2], np.float32), name="weight")
    optimizer = tf_adadelta.Adadelta(
        1.0, gradient_accumulation_steps=accumulation)
  per_replica = tf.constant([[1.0, 5.0], [3.0, 2.0]])
  growth = tf.constant([0.0, 4.0])

  @tf.function
  def step(shift):
    def replica_fn():
      replica = tf.distribute.get_replica_context().replica_id_in_sync_group
      value = tf.gather(per_replica, replica) + shift * growth
      optimizer.apply_gradients([(value, scale), (value, weight)])
    STRATEGY.run(replica_fn)

  step(tf.constant(0.0))
  if accumulation:
    np.testing.assert_array_equal(scale.numpy(), [0.0, 0.0])
    # The second micro-step's values are lower in the second element.
    step(tf.constant(-1.0))
  np.testing.assert_array_equal(scale.numpy(), [3.0, 5.0])
  copies = STRATEGY.experimental_local_results(scale.value)
  np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy())
  # Its value is never a gradient to average: it has no Adadelta slots.
  with pytest.raises(KeyError, match="accumulated_grad"):
    optimizer.get_slot(scale, "accumulated_grad")
  # The trained variable got the summed gradient, as on one device.
  reference_weight = tf.Variable(np.ones([2], np.float32))
  reference = tf_adadelta.Adadelta(1.0,
                                   gradient_accumulation_steps=accumulation)
  for shift in ([0.0, -1.0] if accumulation else [0.0]):
    reference.apply_gradients(
        [(tf.reduce_sum(per_replica, 0) + 2 * shift * growth,
          reference_weight)])
  np.testing.assert_allclose(weight.numpy(), reference_weight.numpy(),
                             rtol=1e-6)


# The Keras face in a custom loop: built by its first step, inside
# `strategy.run` (Keras's own optimizer cannot build there).
KERAS_FACE_SETTINGS = {
    "plain": {},
    "combined": {"gradient_accumulation_steps": 2,
                 "global_clipnorm": CLIP["global_clipnorm"], "use_ema": True,
                 "ema_momentum": 0.9, "ema_overwrite_frequency": 2,
                 "weight_decay": 0.05},
    "lazy_sparse": {"sparse_updates": "lazy", "weight_decay": 0.05,
                    "global_clipnorm": CLIP["global_clipnorm"]},
}


@pytest.mark.parametrize("kind", variable_kinds.KINDS)
@pytest.mark.parametrize("setting", sorted(KERAS_FACE_SETTINGS))
def test_keras_face_built_inside_strategy_run_equals_one_device(setting, kind):
  kwargs = dict(learning_rate=1.0, **KERAS_FACE_SETTINGS[setting])
  variables, optimizer = train_mirrored(
      lambda: tf_adadelta.keras.Adadelta(**kwargs), kind=kind)
  assert optimizer.built
  expected = dm.state(*dm.train_one_device(
      lambda: tf_adadelta.Adadelta(**kwargs)))
  assert_state_close(dm.state(variables, optimizer), expected)
  for v in variables:
    for name in optimizer.get_slot_names():
      copies = STRATEGY.experimental_local_results(
          dm.unwrap(optimizer.get_slot(v, name)))
      assert len(copies) == 2
      np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy())
