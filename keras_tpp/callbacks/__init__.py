"""Keras callbacks of keras_tpp.

- :mod:`~keras_tpp.callbacks.pruning` — :class:`PruningCallback` / :class:`TPPCallback`,
  which run a prepared model's method schedule and log ``prune_lambda``, ``prune_phase``
  and ``prune_penalty``;
- :mod:`~keras_tpp.callbacks.divergence` — :class:`NonFiniteError` and the guard that
  stops training on non-finite values, keeping the last finite weights;
- :mod:`~keras_tpp.callbacks.penalty_log` — the ``prune_penalty`` computation;
- :mod:`~keras_tpp.callbacks.sparse_training` — :class:`SparseTrainingCallback`, which runs
  GMP / GraNet / RigL mask updates and logs ``sparsity`` and ``regrow_rate``.
"""
from keras_tpp.callbacks.divergence import DivergenceGuard, NonFiniteError
from keras_tpp.callbacks.penalty_log import PenaltyLogger, penalty_terms, prune_penalty
from keras_tpp.callbacks.pruning import (
    LAMBDA_KEY,
    PENALTY_KEY,
    PHASE_KEY,
    PruningCallback,
    TPPCallback,
    model_method,
)
from keras_tpp.callbacks.sparse_training import RATE_KEY, SPARSITY_KEY, SparseTrainingCallback

__all__ = ["DivergenceGuard", "LAMBDA_KEY", "NonFiniteError", "PENALTY_KEY", "PHASE_KEY",
           "PenaltyLogger", "PruningCallback", "RATE_KEY", "SPARSITY_KEY", "SparseTrainingCallback",
           "TPPCallback", "model_method", "penalty_terms", "prune_penalty"]
