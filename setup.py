"""Packaging for keras-tpp."""
from setuptools import find_packages, setup

setup(
    name="keras-tpp",
    version="0.2.0",
    description=(
        "Trainability Preserving Pruning (TPP) and related structured pruning "
        "methods for Keras 3, with exact model surgery."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["keras_tpp", "keras_tpp.*"]),
    license="Apache-2.0",
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.6,<4",
        "tensorflow>=2.16,<2.22",
        "numpy>=1.26",
        "absl-py>=1.0",
        "tensorboard>=2.16",
    ],
    extras_require={
        "data": ["tensorflow-datasets>=4.9"],
        "plots": ["matplotlib>=3.7"],
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",
            "tensorflow-datasets>=4.9",
            "matplotlib>=3.7",
            "jax[cpu]>=0.4.30",
        ],
    },
)
