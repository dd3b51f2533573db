"""keras_tpp: Trainability Preserving Pruning and related pruning methods for Keras 3.

The workflow::

    pmodel = keras_tpp.prepare(model, pruning_ratio=0.5, method="tpp")
    pmodel.compile(...)
    pmodel.fit(data, callbacks=[keras_tpp.TPPCallback(...)])
    thin = keras_tpp.shrink(pmodel)      # a physically thinner plain Keras model
    keras_tpp.export(thin, "thin.tflite")

TensorFlow-only helpers (tf.data pipelines, tf.distribute, export) live at the edges
(``keras_tpp.data``, ``keras_tpp.distribute``, ``keras_tpp.deployment``) and import
TensorFlow only when used.
"""
from keras_tpp import (
    callbacks,
    cloning,
    controllers,
    coverage_report,
    filters,
    graph,
    importance,
    latency,
    layer_roles,
    lottery,
    lr_schedules,
    methods,
    metrics,
    models,
    penalties,
    prepared,
    profiling,
    scores,
    sparsity,
    surgery,
    validation,
    workflow,
    wrappers,
)
from keras_tpp.callbacks import (
    NonFiniteError,
    PruningCallback,
    SparseTrainingCallback,
    TPPCallback,
)
from keras_tpp.coverage_report import CoverageReport, CoverageWarning, GroupCoverage, coverage
from keras_tpp.deployment import ExportCheckError, ExportReport, export
from keras_tpp.folding import fold_batchnorm
from keras_tpp.graph import DependencyGraph, UnsupportedModelError
from keras_tpp.latency import LatencyTable, latency_ratios, latency_table
from keras_tpp.lottery import RewindPoint, lottery_round
from keras_tpp.methods import METHODS
from keras_tpp.orthp import orthp
from keras_tpp.penalty_schedule import PenaltySchedule
from keras_tpp.prepared import apply_masks, get_masks, strip
from keras_tpp.profiling import compare, measure_latency, profile
from keras_tpp.sparsity import sparsity_report
from keras_tpp.surgery import make_plan, prune, shrink, zero_channels
from keras_tpp.workflow import prepare
from keras_tpp.wrappers import PruningWrapper

__version__ = "0.5.0"
