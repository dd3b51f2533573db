"""Pruning methods as objects, registered by name.

Each method is one class in one module: :mod:`~keras_tpp.methods.tpp`,
:mod:`~keras_tpp.methods.greg` (GReg-1, GReg-2), :mod:`~keras_tpp.methods.one_shot`
(L1, random), :mod:`~keras_tpp.methods.magnitude` (weight-level magnitude pruning),
:mod:`~keras_tpp.methods.sparse_training` (GMP, GraNet, RigL: weight-level sparse training),
:mod:`~keras_tpp.methods.at_init` (SNIP, GraSP, SynFlow, random: pruning at initialization),
:mod:`~keras_tpp.methods.lottery` (lottery tickets: iterative magnitude pruning). A
method says how :func:`keras_tpp.prepare` selects channels and which
penalties it attaches (:class:`~keras_tpp.methods.base.PruningMethod`), carries its own
options, and builds the controller that the pruning callback runs.

    keras_tpp.prepare(model, 0.5, method="greg2")                           # defaults
    keras_tpp.prepare(model, 0.5, method=keras_tpp.methods.GReg2(kept_strength=-2e-4))

Adding a method is adding a module with a registered :class:`PruningMethod` subclass.
"""
from keras_tpp.methods.base import PruningMethod
from keras_tpp.methods.registry import METHODS, get_method, names, register, unregister
from keras_tpp.methods.tpp import TPP  # registration order is the order of names()
from keras_tpp.methods.greg import GReg1, GReg2  # noqa: I001
from keras_tpp.methods.one_shot import L1, Random
from keras_tpp.methods.magnitude import Magnitude
from keras_tpp.methods.sparse_training import GMP, GraNet, RigL, SparseTrainingMethod
from keras_tpp.methods.lottery import Lottery
from keras_tpp.methods.at_init import SNIP, GraSP, PruningAtInit, RandomInit, SynFlow

__all__ = ["GMP", "GReg1", "GReg2", "GraNet", "GraSP", "L1", "Lottery", "METHODS", "Magnitude",
           "PruningAtInit", "PruningMethod", "Random", "RandomInit", "RigL", "SNIP",
           "SparseTrainingMethod", "SynFlow", "TPP", "get_method", "names", "register",
           "unregister"]
