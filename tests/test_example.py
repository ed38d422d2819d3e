"""End-to-end tests of savedmodel_examples/train_export_resume.py.

The program runs once (in a subprocess, on 300 examples) for the whole
module; the tests check its dataset, training, summaries, checkpoints,
SavedModel and the resumed run against independent references: the shipped
file, the uninterrupted run's own losses, the original trainer, and a second
resume in a process where `tf_adadelta` cannot be imported at all.
"""

import collections
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow.core.protobuf import saved_model_pb2

from savedmodel_examples import data
from savedmodel_examples import loop
from savedmodel_examples import trainer as trainer_lib
from savedmodel_examples.digits_dataset import digits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "savedmodel_examples", "train_export_resume.py")

TRAIN_EXAMPLES = 300
TEST_EXAMPLES = 200
BATCH_SIZE = 32
STEPS_PER_EPOCH = 10  # ceil(300 / 32)
EPOCHS = 8
RESUME_EPOCHS = 2
VERIFY_STEPS = 4
EXPORTED_STEP = EPOCHS * STEPS_PER_EPOCH
DATA_FLAGS = [
    f"--train_examples={TRAIN_EXAMPLES}", f"--test_examples={TEST_EXAMPLES}",
    f"--batch_size={BATCH_SIZE}", f"--resume_epochs={RESUME_EPOCHS}",
]
RTOL = 1e-5

# Examples per digit 0..9 in the UCI copy (as published with scikit-learn's
# `load_digits`).
CLASS_COUNTS = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]

Run = collections.namedtuple("Run", ["output_dir", "returncode", "log"])


def _env(*first_on_path):
  env = dict(os.environ)
  path = [*first_on_path, ROOT] + [p for p in [env.get("PYTHONPATH")] if p]
  env["PYTHONPATH"] = os.pathsep.join(path)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  return env


def _run_program(args, env):
  proc = subprocess.run([sys.executable, SCRIPT, *args], env=env,
                        capture_output=True, text=True, timeout=600,
                        check=False)
  return proc.returncode, proc.stdout + proc.stderr


def _read_json(output_dir, name):
  path = os.path.join(output_dir, name)
  assert os.path.exists(path), f"{name} was not written"
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp("example"))
  returncode, log = _run_program(
      [f"--output_dir={output_dir}", f"--epochs={EPOCHS}",
       f"--verify_steps={VERIFY_STEPS}", *DATA_FLAGS], _env())
  return Run(output_dir, returncode, log)


@pytest.fixture(scope="module")
def train_metrics(run):
  assert os.path.exists(os.path.join(run.output_dir, "train_metrics.json")), (
      run.log[-6000:])
  return _read_json(run.output_dir, "train_metrics.json")


@pytest.fixture(scope="module")
def resume_metrics(run):
  assert run.returncode == 0, run.log[-6000:]
  return _read_json(run.output_dir, "resume_metrics.json")


def _splits(output_dir):
  data_dir = os.path.join(output_dir, "tensorflow_datasets")
  return (data.load("uci_digits", data_dir, "train", TRAIN_EXAMPLES),
          data.load("uci_digits", data_dir, "test", TEST_EXAMPLES))


def _row_keys(images, labels):
  return sorted(image.tobytes() + bytes([label])
                for image, label in zip(images, labels))


def _as_numpy(builder, split):
  return tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True,
                                          batch_size=-1))


def test_builder_prepares_the_shipped_digits_without_download(tmp_path):
  builder = digits.Digits(data_dir=str(tmp_path))
  builder.download_and_prepare()

  assert builder.info.name == "uci_digits"
  assert builder.info.splits["train"].num_examples == 1437
  assert builder.info.splits["test"].num_examples == 360
  file_images, file_labels = digits.read_rows()
  np.testing.assert_array_equal(np.bincount(file_labels), CLASS_COUNTS)
  for split, rows in (("train", slice(0, 1437)), ("test", slice(1437, None))):
    images, labels = _as_numpy(builder, split)
    assert images.shape == (len(labels), 8, 8, 1)
    assert images.dtype == np.uint8 and images.max() == 16
    # TFDS stores the examples in its own order: compare as multisets.
    assert _row_keys(images, labels) == _row_keys(file_images[rows],
                                                  file_labels[rows])

  # What the program trains on: pixels / 16, flattened; or 2x2 block means.
  split = data.load("uci_digits", str(tmp_path), "test", max_examples=50)
  images, labels = _as_numpy(builder, "test[:50]")
  np.testing.assert_array_equal(split.labels, labels)
  np.testing.assert_allclose(split.features,
                             images.reshape(50, 64) / 16.0, rtol=1e-6)
  assert split.num_classes == 10
  small = data.load("uci_digits", str(tmp_path), "test", max_examples=50,
                    image_size=4)
  blocks = images.reshape(50, 4, 2, 4, 2).mean(axis=(2, 4)) / 16.0
  np.testing.assert_allclose(small.features, blocks.reshape(50, 16),
                             rtol=1e-6)



def test_training_makes_the_loss_fall(train_metrics):
  assert len(train_metrics["losses"]) == EXPORTED_STEP
  assert train_metrics["exported_iterations"] == EXPORTED_STEP
  epochs = train_metrics["epochs"]
  assert [e["iterations"] for e in epochs] == list(
      range(STEPS_PER_EPOCH, EXPORTED_STEP + 1, STEPS_PER_EPOCH))
  # From ~ln(10) = 2.3 for the untrained model.
  assert epochs[0]["train_loss"] > 1.8
  assert epochs[-1]["train_loss"] < 0.6 * epochs[0]["train_loss"]
  assert epochs[-1]["test_loss"] < epochs[0]["test_loss"]


def test_tensorboard_has_the_per_step_scalars(run, train_metrics):
  values = collections.defaultdict(dict)
  files = glob.glob(os.path.join(run.output_dir, "tensorboard", "train",
                                 "events.out.tfevents.*"))
  assert files
  for path in files:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        values[value.tag][event.step] = float(
            tf.make_ndarray(value.tensor))
  assert sorted(values["loss"]) == list(range(EXPORTED_STEP))
  np.testing.assert_allclose([values["loss"][s] for s in range(EXPORTED_STEP)],
                             train_metrics["losses"], rtol=1e-6)
  assert set(values["learning_rate"].values()) == {1.0}
  assert len(values["accuracy"]) == EXPORTED_STEP
  assert [values["test_accuracy"][e["iterations"] - 1]
          for e in train_metrics["epochs"]] == pytest.approx(
              [e["test_accuracy"] for e in train_metrics["epochs"]])


def test_checkpoint_restores_and_replays_the_uninterrupted_run(
    run, train_metrics):
  train_split, test_split = _splits(run.output_dir)
  manager_dir = os.path.join(run.output_dir, "checkpoints")
  state = tf.train.get_checkpoint_state(manager_dir)
  # max_to_keep=3: the last three epochs.
  assert [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths
         ] == [EXPORTED_STEP - 20, EXPORTED_STEP - 10, EXPORTED_STEP]

  trainer = trainer_lib.Trainer(input_dim=64, num_classes=10, seed=0)
  checkpoint = tf.train.Checkpoint(trainer=trainer)
  earlier = EXPORTED_STEP - STEPS_PER_EPOCH
  checkpoint.restore(os.path.join(manager_dir, f"ckpt-{earlier}")
                     ).assert_consumed()
  assert int(trainer.optimizer.iterations) == earlier

  # The last epoch again, from the restored model and Adadelta accumulators.
  replayed = [
      float(trainer.train_step(features=x, labels=y)["loss"])
      for _, x, y in data.batches(train_split, BATCH_SIZE, 0, earlier,
                                  EXPORTED_STEP)
  ]
  np.testing.assert_allclose(replayed, train_metrics["losses"][earlier:],
                             rtol=RTOL)
  assert loop.evaluate(trainer.serve, test_split)["loss"] == pytest.approx(
      train_metrics["test_loss"], rel=RTOL)

  final = trainer_lib.Trainer(input_dim=64, num_classes=10, seed=1)
  tf.train.Checkpoint(trainer=final).restore(
      train_metrics["checkpoint"]).assert_consumed()
  for mine, saved in zip(trainer.variables, final.variables):
    np.testing.assert_allclose(mine.numpy(), saved.numpy(), rtol=RTOL,
                               atol=1e-7, err_msg=mine.name)


def test_savedmodel_has_both_signatures_and_the_optimizer_state(run,
                                                               train_metrics):
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(run.output_dir, "saved_model", "saved_model.pb"),
            "rb") as f:
    proto.ParseFromString(f.read())
  signatures = proto.meta_graphs[0].signature_def

  def inputs(name):
    return {key: (tf.dtypes.as_dtype(spec.dtype),
                  [d.size for d in spec.tensor_shape.dim])
            for key, spec in signatures[name].inputs.items()}

  assert inputs("train_step") == {"features": (tf.float32, [-1, 64]),
                                  "labels": (tf.int64, [-1])}
  assert set(signatures["train_step"].outputs) == {
      "loss", "accuracy", "learning_rate", "iterations"}
  assert inputs("serving_default") == {"features": (tf.float32, [-1, 64])}
  assert set(signatures["serving_default"].outputs) == {
      "logits", "probabilities", "classes"}
  # Every value of the checkpoint written at the export (model variables,
  # `iterations`, the learning rate and the two Adadelta accumulators of each
  # model variable) is in the SavedModel's variables.
  exported = tf.train.load_checkpoint(
      os.path.join(run.output_dir, "saved_model", "variables", "variables"))
  exported = [exported.get_tensor(key)
              for key in exported.get_variable_to_shape_map()
              if key != "_CHECKPOINTABLE_OBJECT_GRAPH"]
  checkpoint = tf.train.load_checkpoint(train_metrics["checkpoint"])
  keys = [key for key in checkpoint.get_variable_to_shape_map()
          if key.startswith("trainer/")]
  assert len(keys) == 4 + 2 + 2 * 4
  assert sum(".OPTIMIZER_SLOT/" in key for key in keys) == 8
  for key in keys:
    value = checkpoint.get_tensor(key)
    assert np.any(value != 0), key
    assert any(v.shape == value.shape and np.array_equal(v, value)
               for v in exported), f"{key} is not in the SavedModel"
  assert len(exported) == len(keys)


def test_fresh_process_resume_continues_the_original_trainer(
    train_metrics, resume_metrics):
  assert resume_metrics["tf_adadelta_imported"] is False
  assert resume_metrics["start_iterations"] == EXPORTED_STEP
  assert resume_metrics["final_iterations"] == (
      EXPORTED_STEP + RESUME_EPOCHS * STEPS_PER_EPOCH)
  assert len(resume_metrics["losses"]) == RESUME_EPOCHS * STEPS_PER_EPOCH
  assert resume_metrics["signatures"] == ["serving_default", "train_step"]
  # The program took the same steps on its original trainer after the
  # resumed process had finished.
  np.testing.assert_allclose(resume_metrics["losses"][:VERIFY_STEPS],
                             train_metrics["in_process_resume_losses"],
                             rtol=RTOL)
  assert resume_metrics["start_test_accuracy"] == pytest.approx(
      train_metrics["test_accuracy"])
  # Continuing, not starting over: the first epoch's loss was ~2.3.
  resumed_epoch = resume_metrics["epochs"][0]["train_loss"]
  assert resumed_epoch < train_metrics["epochs"][0]["train_loss"] * 0.6
  assert resume_metrics["epochs"][-1]["train_loss"] < (
      train_metrics["epochs"][-1]["train_loss"])


def test_resume_runs_where_tf_adadelta_cannot_be_imported(
    run, resume_metrics, tmp_path):
  blocker = tmp_path / "blocked" / "tf_adadelta"
  blocker.mkdir(parents=True)
  (blocker / "__init__.py").write_text(
      "raise ImportError('tf_adadelta is not installed here')\n")
  output_dir = tmp_path / "resume"
  returncode, log = _run_program(
      [f"--output_dir={output_dir}",
       f"--resume_from={os.path.join(run.output_dir, 'saved_model')}",
       "--data_dir=" + os.path.join(run.output_dir, "tensorflow_datasets"),
       "--verbose=0", *DATA_FLAGS], _env(str(blocker.parent)))
  assert returncode == 0, log[-6000:]
  again = _read_json(output_dir, "resume_metrics.json")
  np.testing.assert_allclose(again["losses"], resume_metrics["losses"],
                             rtol=RTOL)
  assert again["final_iterations"] == resume_metrics["final_iterations"]


def test_final_accuracy_is_well_above_chance(resume_metrics):
  # Chance is 0.1 for ten balanced classes.
  assert resume_metrics["test_accuracy"] > 0.6
