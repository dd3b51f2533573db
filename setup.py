"""Packaging for keras-tpp."""
from setuptools import find_packages, setup

setup(
    name="keras-tpp",
    version="0.5.0",
    description=(
        "Trainability Preserving Pruning (TPP) and related structured pruning "
        "methods for Keras 3, with exact model surgery, and sparse training (GraNet, "
        "GMP, RigL)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_tpp", "keras_tpp.*"]),
    license="Apache-2.0",
    python_requires=">=3.10",
    # The core (prepare, callbacks, surgery, the PyDataset data path) needs keras, numpy,
    # absl-py and Pillow plus ONE Keras backend: pick it with an extra, e.g.
    # `pip install -e ".[jax]"`, `".[torch]"` or `".[tensorflow]"`. TensorFlow is needed only
    # by the TensorFlow edges: keras_tpp.data's tf.data pipelines, keras_tpp.distribute
    # (tf.distribute) and keras_tpp.deployment (TFLite export).
    install_requires=[
        "keras>=3.6,<4",
        "numpy>=1.26",
        "absl-py>=1.0",
        "Pillow>=9.1",  # JPEG/PNG decoding in keras_tpp.data.pydataset (no TensorFlow)
    ],
    extras_require={
        # Keras backends. "tensorflow" also enables tf.data, tf.distribute and TFLite export.
        "tensorflow": ["tensorflow>=2.16,<2.22", "tensorboard>=2.16"],
        "jax": ["jax>=0.4.30"],
        "torch": ["torch>=2.1"],
        "data": ["tensorflow>=2.16,<2.22", "tensorflow-datasets>=4.9"],
        "plots": ["matplotlib>=3.7"],
        # Reference baseline for benchmarks/gmp_vs_tfmot.py (run in its own process: importing
        # tensorflow_model_optimization switches tf.keras to tf_keras). tf_keras must match
        # the TensorFlow minor version.
        "compare": ["tf_keras>=2.16,<2.22", "tensorflow-model-optimization>=0.8"],
        "test": [
            "tensorflow>=2.16,<2.22",
            "tensorboard>=2.16",
            "pytest>=8.2",  # 8.2: @file argument lists (tests/torch_files.txt)
            "pytest-xdist>=3",
            "tensorflow-datasets>=4.9",
            "matplotlib>=3.7",
            "jax[cpu]>=0.4.30",
        ],
    },
)
