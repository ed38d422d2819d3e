"""Installs tf_adadelta."""

import setuptools

setuptools.setup(
    name="tf_adadelta",
    version="0.1.0",
    description=("Keras's Adadelta as a tf.Module: exact, fast, and correct "
                 "under tf.distribute and SavedModel."),
    packages=setuptools.find_packages(include=["tf_adadelta", "tf_adadelta.*"]),
    python_requires=">=3.9",
    install_requires=[
        "tensorflow>=2.16",
        "tensorflow-datasets",
        "numpy",
        "absl-py",
        # tensorflow-datasets imports it when preparing a dataset but declares
        # it only for Python < 3.9 (tensorflow/datasets#11212).
        "importlib_resources",
    ],
    extras_require={"test": ["pytest", "hypothesis"]},
)
