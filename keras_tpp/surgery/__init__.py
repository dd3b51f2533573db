"""Model surgery: remove channels physically, or zero them in a copy.

A *plan* maps a producer layer's path (``"outer/inner"`` inside nested models) to the output
channel indices to remove (or a boolean keep-mask); an entry for any producer of a coupled group applies to the whole
group (:mod:`keras_tpp.graph`).

- :func:`zero_channels` — the *masked model*: a copy whose planned producer filters and biases
  and the followers' per-channel parameters (BN γ, β, moving mean; depthwise kernel/bias;
  PReLU α) are zero, so that the removed channels are exactly zero after each follower.
- :func:`shrink` — the *thin model*: a plain functional Keras model without those channels
  (producers' filters, followers' parameters, consumers' input slices, Concatenate offsets,
  Flatten expansion). It computes what ``model`` computes when the planned producers output
  zero in the removed channels; a removed channel whose value is still non-zero where it
  reaches a consumer (BN β and moving statistics, a depthwise bias, sigmoid(0) = 0.5, a
  Rescaling offset) is folded exactly into the consumer's bias when the value is spatially
  constant and the consumer is a Dense or a convolution without zero padding on that input
  (1×1 or 'valid'); otherwise shrink refuses with a ValueError. On a masked model
  (``shrink(zero_channels(m, plan), plan)``, what :func:`prune` does) the thin model's
  outputs equal the masked model's.
- :func:`prune` — one-shot pruning by L1 norm (or at random) straight to a thin model.

The user's model is never modified; every check runs before anything is built. Layers and
keras.ops operations keras_tpp cannot follow make the groups through them unprunable
(``on_unsupported="report"``, the default; ``"raise"`` raises instead); a plan naming such a
group is a ValueError with the reason. ``allow_renormalization=True`` lets a plan remove
channels that pass through LayerNormalization over channels (γ, β sliced; not exact: the
remaining channels are renormalized).

Modules: :mod:`~keras_tpp.surgery.plan` (plans and masks → plans),
:mod:`~keras_tpp.surgery.edits` (what each layer loses, new configs and weights),
:mod:`~keras_tpp.surgery.constants` (values of removed channels, exact bias folds),
:mod:`~keras_tpp.surgery.api` (the public functions).
"""
from keras_tpp.surgery.api import check_finite, make_plan, prune, shrink, zero_channels
from keras_tpp.surgery.plan import Plan, plan_from_masks

__all__ = ["zero_channels", "shrink", "prune", "make_plan", "plan_from_masks", "check_finite",
           "Plan"]
