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
    ],
    extras_require={"test": ["pytest", "hypothesis"]},
)
