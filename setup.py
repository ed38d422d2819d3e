"""Installs tf_adadelta.

TensorFlow itself is not in `install_requires`, as in TensorFlow Probability:
pip does not count `tensorflow-cpu`, `tensorflow[and-cuda]`, a TPU VM's
TensorFlow or `tensorflow-macos` as `tensorflow`, so requiring `tensorflow`
would install a second TensorFlow over the one the user has.
`import tf_adadelta` checks the installed versions instead
(`tf_adadelta/version_check.py`). On a machine without TensorFlow, install an
extra that brings one, as TensorFlow Addons offers:
`pip install ".[tensorflow]"` (or `[tensorflow-cpu]`, `[and-cuda]`).
"""

import setuptools

# The tested range (README, "Supported versions"; .ci/version_matrix.py).
TENSORFLOW_RANGE = ">=2.16,<2.22"

setuptools.setup(
    name="tf_adadelta",
    version="0.2.0.dev0",
    description=("Keras's Adadelta as a tf.Module: exact, fast, and correct "
                 "under tf.distribute and SavedModel."),
    packages=setuptools.find_packages(include=["tf_adadelta", "tf_adadelta.*"]),
    python_requires=">=3.9",
    install_requires=[
        # Keras 3 has no dependency on TensorFlow, so this never installs or
        # changes one. The tests compare with keras.optimizers.Adadelta and
        # ran with Keras 3.15.1 (on TensorFlow 2.16.2 and 2.21.0), the oldest
        # Keras declared until an older one is tested.
        "keras>=3.15.1,<4",
        "tensorflow-datasets",
        # 1.21's generated code needs protobuf >= 6, which TensorFlow <= 2.19
        # does not allow; tensorflow-datasets then fails to import its `core`.
        "tensorflow-metadata<1.21",
        # tensorflow-metadata's dependency; from 1.75.1 it needs protobuf >=
        # 6.33.5, and pip, which ignores the installed TensorFlow's pins, would
        # upgrade protobuf past what TensorFlow <= 2.19 allows. 1.75.0 accepts
        # protobuf 4.25.8 to 7 (TensorFlow 2.16 to 2.21).
        "googleapis-common-protos<1.75.1",
        "numpy",
        "absl-py",
        # tensorflow-datasets imports it when preparing a dataset but declares
        # it only for Python < 3.9 (tensorflow/datasets#11212).
        "importlib_resources",
    ],
    extras_require={
        "tensorflow": [f"tensorflow{TENSORFLOW_RANGE}"],
        "tensorflow-cpu": [f"tensorflow-cpu{TENSORFLOW_RANGE}"],
        "and-cuda": [f"tensorflow[and-cuda]{TENSORFLOW_RANGE}"],
        "test": ["pytest", "hypothesis"],
    },
)
