"""The channel dependency graph of a functional or Sequential Keras model.

Removing output channel ``c`` of a convolution is only possible if every layer that sees that
channel is changed with it: the batch norm behind it, the depthwise conv after that, the other
convolutions whose outputs are *added* to it (a residual sum couples them: they must lose the
same indices), and the input slices of the layers that consume it. This module follows each
channel from the layers that produce it to the layers that consume it and collects them in
:class:`ChannelGroup` objects.

Vocabulary (one group = one set of N channels that can only be removed together):

- *producers* — layers whose output filters create the channels (the ``producer`` role of
  :mod:`keras_tpp.layer_roles`: Conv1D/2D/3D, Dense, SeparableConv, ConvTranspose).
  Several producers when coupled by Add/Subtract/Multiply/Average/Maximum/Minimum or a
  spatial Concatenate.
- *followers* — layers with per-channel parameters on the way (BatchNormalization,
  DepthwiseConv with depth_multiplier 1, PReLU, LayerNormalization over channels, ...).
- *consumers* — layers whose input channels include the group: a slice of their kernel goes.
  ``offset`` places the group in the consumer's input channels (after a Concatenate) and
  ``repeat`` counts the positions each channel takes after Flatten/Reshape (input index
  ``p·C_total + offset + i`` for ``p < repeat``, C_total the channels before flattening).

Channels pass unchanged through activations, dropout, pooling, padding, cropping, up-sampling,
scalar rescaling, reshapes that keep the channel axis last, and nested functional models.
keras.ops operations recorded in the graph (``x + 3``, ``keras.ops.relu6(x)``, ``a * b``) are
followed too (:mod:`~keras_tpp.graph.operations`): channel-wise ones pass channels, binary ones
between tensors couple them like an ``Add`` layer, and per-channel constants are sliced.
A group is *unprunable* (with a ``reason``) when it reaches a model output, is coupled with a
model input, or touches a layer whose channel mapping keras_tpp does not model.

Modules: :mod:`~keras_tpp.graph.nodes` (layer refs, consumer slots, groups),
:mod:`~keras_tpp.graph.operations` (roles of keras.ops operation nodes),
:mod:`~keras_tpp.graph.walk` (the call graph in topological order, read through
:mod:`keras_tpp.keras_internals`), :mod:`~keras_tpp.graph.layout` (channel layouts and their
union-find), :mod:`~keras_tpp.graph.dependency` (:class:`DependencyGraph`, one rule per role
of :mod:`keras_tpp.layer_roles`).
"""
from keras_tpp.graph.dependency import DependencyGraph
from keras_tpp.graph.layout import Layout, Step
from keras_tpp.graph.nodes import ChannelGroup, ConsumerRef, LayerRef, UnsupportedModelError
from keras_tpp.graph.walk import CallSite, is_functional, iter_layers, output_layer_names, walk

__all__ = [
    "CallSite", "ChannelGroup", "ConsumerRef", "DependencyGraph", "LayerRef", "Layout", "Step",
    "UnsupportedModelError", "is_functional", "iter_layers", "output_layer_names", "walk",
]
