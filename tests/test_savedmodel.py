"""SavedModel: a trainer with its optimizer, exported, resumed elsewhere.

References: the same trainer trained without the break in this process. The
SavedModel is loaded by a fresh Python process that cannot import
`tf_adadelta`, run by the installed `saved_model_cli`, and its variables
checkpoint is restored into new Python objects.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-direct-tensorflow-import
from tensorflow.core.protobuf import trackable_object_graph_pb2  # pylint: disable=g-direct-tensorflow-import

import tf_adadelta
from tests import variable_kinds

CONFIG = dict(learning_rate=0.9, gradient_accumulation_steps=2, use_ema=True,
              ema_momentum=0.8)
X = np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0
Y = np.array([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0], [1.5, 0.5]], np.float32)


class _Layer(tf.Module):
  """Its variables are `tf.Variable`s or Keras variables (`kind`)."""

  def __init__(self, kind=variable_kinds.TF):
    super().__init__()
    self.first = variable_kinds.make(
        kind, np.linspace(-1, 1, 6).reshape(3, 2).astype(np.float32), "kernel")
    self.second = variable_kinds.make(
        kind, np.linspace(1, -0.5, 6).reshape(3, 2).astype(np.float32),
        "kernel")
    self.bias = variable_kinds.make(kind, np.array([0.1, -0.2], np.float32),
                                    "bias")


class Trainer(tf.Module):
  """A model (two same-shaped kernels and a bias) and its optimizer.

  With `deep`, the variables sit four levels below the root, deeper than the
  optimizer's exported slots, so a restore reaches the slots first.
  """

  def __init__(self, deep=False, build_order=None, kind=variable_kinds.TF,
               face=tf_adadelta.Adadelta):
    super().__init__()
    layer = _Layer(kind)
    if deep:
      self.net = tf.Module()
      self.net.block = tf.Module()
      self.net.block.layer = layer
    else:
      self.layer = layer
    # Not tracked here, so the variables' only paths are through the layer.
    object.__setattr__(self, "_variables",
                       (layer.first, layer.second, layer.bias))
    self.optimizer = face(**CONFIG)
    if build_order is not None:
      self.optimizer.build([self._variables[i] for i in build_order])

  def model_variables(self):
    return list(self._variables)

  @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32),
                                tf.TensorSpec([None, 2], tf.float32)])
  def train_step(self, x, y):
    first, second, bias = self._variables
    with tf.GradientTape() as tape:
      prediction = tf.matmul(x, first) + tf.sin(tf.matmul(x, second)) + bias
      loss = tf.reduce_mean((prediction - y) ** 2)
    grads = tape.gradient(loss, self._variables)
    self.optimizer.apply_gradients(zip(grads, self._variables))
    return {"loss": loss, "iterations": tf.identity(self.optimizer.iterations)}

  @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
  def predict(self, x):
    first, second, bias = self._variables
    return {"prediction": tf.matmul(x, first) + tf.sin(tf.matmul(x, second)) +
                          bias}


def _export(trainer, directory):
  tf.saved_model.save(
      trainer, str(directory),
      signatures={"train_step": trainer.train_step.get_concrete_function(),
                  "serving_default": trainer.predict.get_concrete_function()})


def _state(trainer):
  optimizer = trainer.optimizer
  values = [v.numpy() for v in trainer.model_variables()]
  for var in trainer.model_variables():
    values += [optimizer.get_slot(var, name).numpy()
               for name in optimizer.get_slot_names()]
  return values + [optimizer.iterations.numpy(),
                   optimizer.micro_iterations.numpy()]


def _trained(steps, deep=False, kind=variable_kinds.TF,
             face=tf_adadelta.Adadelta):
  trainer = Trainer(deep=deep, kind=kind, face=face)
  for _ in range(steps):
    trainer.train_step(X, Y)
  return trainer


def _assert_all_close(actual, expected):
  assert len(actual) == len(expected)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-7)


def _run_clean_python(code, cwd):
  """Runs `code` in a new interpreter that cannot import `tf_adadelta`."""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          cwd=str(cwd), env=env, capture_output=True,
                          text=True, timeout=240, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


# The Keras face in a custom loop: a tf.Module holding it exports and resumes
# the same way (its state is Keras variables, tracked by position).
SAVEDMODEL_CASES = {
    "module_face-tf_variable": (tf_adadelta.Adadelta, variable_kinds.TF),
    "module_face-keras_variable": (tf_adadelta.Adadelta, variable_kinds.KERAS),
    "keras_face-keras_variable": (tf_adadelta.keras.Adadelta,
                                  variable_kinds.KERAS),
}


@pytest.mark.parametrize("case", sorted(SAVEDMODEL_CASES))
def test_loads_without_the_library_and_continues_training(tmp_path, case):
  face, kind = SAVEDMODEL_CASES[case]
  trainer = _trained(3, kind=kind, face=face)
  export_dir = tmp_path / "model"
  _export(trainer, export_dir)
  losses = [trainer.train_step(X, Y)["loss"].numpy() for _ in range(4)]

  _run_clean_python(f"""
      import sys
      import numpy as np
      import tensorflow as tf
      loaded = tf.saved_model.load({str(export_dir)!r})
      x, y = np.load("x.npy"), np.load("y.npy")
      losses, iterations = [], []
      for _ in range(4):
        out = loaded.train_step(x, y)
        losses.append(out["loss"].numpy())
        iterations.append(out["iterations"].numpy())
      signature = loaded.signatures["train_step"]
      predicted = loaded.signatures["serving_default"](x=tf.constant(x))
      layer = loaded.layer
      np.savez("out.npz", losses=losses, iterations=iterations,
               first=layer.first.numpy(), second=layer.second.numpy(),
               bias=layer.bias.numpy(),
               prediction=predicted["prediction"].numpy(),
               library_loaded="tf_adadelta" in sys.modules)
      """, cwd=_with_inputs(tmp_path))
  out = np.load(tmp_path / "out.npz")
  assert not out["library_loaded"]
  np.testing.assert_allclose(out["losses"], losses, rtol=1e-6)
  # Three steps before the export, four after; applied every second call.
  np.testing.assert_array_equal(out["iterations"], [2, 2, 3, 3])
  layer = trainer.layer
  _assert_all_close([out["first"], out["second"], out["bias"]],
                    [layer.first.numpy(), layer.second.numpy(),
                     layer.bias.numpy()])
  np.testing.assert_allclose(out["prediction"], trainer.predict(X)[
      "prediction"].numpy(), rtol=1e-6)


def _with_inputs(directory):
  np.save(directory / "x.npy", X)
  np.save(directory / "y.npy", Y)
  return directory


@pytest.mark.parametrize("build_order", [None, (2, 1, 0)],
                         ids=["lazy_slots", "built_in_other_order"])
@pytest.mark.parametrize("deep", [False, True], ids=["shallow", "deep"])
@pytest.mark.parametrize("kind", variable_kinds.KINDS)
def test_variables_checkpoint_restores_into_new_objects(tmp_path, deep,
                                                        build_order, kind):
  trainer = _trained(3, deep=deep, kind=kind)
  export_dir = tmp_path / "model"
  _export(trainer, export_dir)
  for _ in range(3):
    trainer.train_step(X, Y)
  expected = _state(trainer)

  fresh = Trainer(deep=deep, build_order=build_order, kind=kind)
  # `expect_partial`: the checkpoint's `save_counter` has no saved value.
  tf.train.Checkpoint(root=fresh).restore(
      os.path.join(str(export_dir), "variables", "variables")).expect_partial()
  for _ in range(3):
    fresh.train_step(X, Y)
  _assert_all_close(_state(fresh), expected)


def test_savedmodel_has_no_slot_references_and_checkpoints_keep_them(
    tmp_path):
  trainer = _trained(2)
  _export(trainer, tmp_path / "model")
  saved_model = saved_model_pb2.SavedModel()
  saved_model.ParseFromString((tmp_path / "model" / "saved_model.pb")
                              .read_bytes())
  graph = saved_model.meta_graphs[0].object_graph_def
  assert not [n for n in graph.nodes if n.slot_variables]
  # The slots are there as ordinary children: 3 variables x 4 slots.
  slot_nodes = [n for n in graph.nodes
                if n.WhichOneof("kind") == "variable" and
                n.variable.name.rsplit("/", 1)[-1] in (
                    "accumulated_grad", "accumulated_delta_var", "average",
                    "gradient_accumulator")]
  assert len(slot_nodes) == 12

  # An ordinary checkpoint written afterwards uses the slot protocol again.
  path = tf.train.Checkpoint(root=trainer).save(str(tmp_path / "ckpt"))
  proto = trackable_object_graph_pb2.TrackableObjectGraph()
  proto.ParseFromString(tf.train.load_checkpoint(path).get_tensor(
      "_CHECKPOINTABLE_OBJECT_GRAPH"))
  assert sum(len(n.slot_variables) for n in proto.nodes) == 12


def test_saved_model_cli_runs_the_exported_train_step(tmp_path):
  trainer = _trained(1)
  export_dir = tmp_path / "model"
  _export(trainer, export_dir)
  expected = trainer.train_step(X, Y)
  cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
  outdir = tmp_path / "cli_out"
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
      [sys.executable, cli, "run", "--dir", str(export_dir), "--tag_set",
       "serve", "--signature_def", "train_step", "--input_exprs",
       f"x={X.tolist()};y={Y.tolist()}",
       "--outdir", str(outdir)],
      env=env, capture_output=True, text=True, timeout=240, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  np.testing.assert_allclose(np.load(outdir / "loss.npy"),
                             expected["loss"].numpy(), rtol=1e-6)
  # The step ran on the restored state: the second call completes an
  # accumulation cycle.
  assert int(np.load(outdir / "iterations.npy")) == 1
