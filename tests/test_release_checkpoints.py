"""Checkpoints written by earlier releases restore and continue exactly.

Each `tests/fixtures/checkpoint_<version>/` was written by that release with
`tests/fixtures/write_checkpoint_fixture.py`: a checkpoint taken mid-way
through gradient accumulation, with EMA, and the state that release reached
a few calls later. Object and slot names in checkpoints are a public format;
a fixture per release keeps them so. Each `tests/fixtures/keras_face_<version>/`
(`write_keras_face_fixture.py`) does the same for the Keras face's `.keras`
file and `tf.train.Checkpoint`, whose optimizer variables are positional.
"""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.fixtures import write_checkpoint_fixture as fixture
from tests.fixtures import write_keras_face_fixture as keras_fixture

_FIXTURES_DIR = os.path.join(os.path.dirname(__file__), "fixtures")
FIXTURES = sorted(glob.glob(os.path.join(_FIXTURES_DIR, "checkpoint_*")))
KERAS_FACE_FIXTURES = sorted(glob.glob(os.path.join(_FIXTURES_DIR,
                                                    "keras_face_*")))


def _assert_state(actual, expected):
  assert sorted(actual) == sorted(expected)
  for name in expected:
    np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6,
                               atol=1e-7, err_msg=name)


def test_a_fixture_exists_for_the_first_release():
  assert any(path.endswith("checkpoint_0.1.0") for path in FIXTURES)


@pytest.mark.parametrize("path", FIXTURES, ids=os.path.basename)
@pytest.mark.parametrize("when", ["deferred", "built"])
def test_release_checkpoint_restores_and_continues(path, when):
  saved = dict(np.load(os.path.join(path, "saved.npz")))
  expected = dict(np.load(os.path.join(path, "expected.npz")))
  model, optimizer = fixture.Model(), fixture.make_optimizer()
  if when == "built":
    optimizer.build([model.kernel, model.bias])
  status = tf.train.Checkpoint(model=model, optimizer=optimizer).read(
      os.path.join(path, "ckpt"))
  if when == "deferred":
    # The slots are created, from the saved values, by the first call; check
    # the restored state through a call that only accumulates.
    assert not optimizer.built
  else:
    status.assert_consumed()
    _assert_state(fixture.state(model, optimizer), saved)
  start = fixture.CALLS_BEFORE_SAVE
  fixture.train(model, optimizer,
                range(start, start + fixture.CALLS_AFTER_SAVE))
  status.assert_consumed()
  _assert_state(fixture.state(model, optimizer), expected)


def test_a_fixture_exists_for_the_keras_face():
  assert KERAS_FACE_FIXTURES


def _continue_keras_face(model):
  start = keras_fixture.CALLS_BEFORE_SAVE
  keras_fixture.train(model, range(start,
                                   start + keras_fixture.CALLS_AFTER_SAVE))
  return keras_fixture.state(model)


@pytest.mark.parametrize("path", KERAS_FACE_FIXTURES, ids=os.path.basename)
def test_keras_face_file_loads_and_continues(path):
  saved = dict(np.load(os.path.join(path, "saved.npz")))
  expected = dict(np.load(os.path.join(path, "expected.npz")))
  model = keras.models.load_model(os.path.join(path, "model.keras"))
  _assert_state(keras_fixture.state(model), saved)
  _assert_state(_continue_keras_face(model), expected)


@pytest.mark.parametrize("path", KERAS_FACE_FIXTURES, ids=os.path.basename)
def test_keras_face_checkpoint_restores_deferred_and_continues(path):
  expected = dict(np.load(os.path.join(path, "expected.npz")))
  model = keras_fixture.make_model()
  status = tf.train.Checkpoint(model=model, optimizer=model.optimizer).read(
      os.path.join(path, "ckpt"))
  assert not model.optimizer.built  # Restored into the first step's slots.
  _assert_state(_continue_keras_face(model), expected)
  status.assert_consumed()
