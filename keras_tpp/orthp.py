"""OrthP oracle (Wang & Fu, ICLR 2023): replace pruned kernels by the orthogonal factor of their QR.

For a kernel M of shape (m, n) (Dense: (C_in, N); Conv: reshaped to (kh·kw·C_in, N)):

* m ≥ n (tall or square): M = QR, Q (m, n); the new kernel gain·Q has orthonormal
  columns, QᵀQ = I_n.
* m < n (wide): Mᵀ = QR, Q (n, m); the new kernel gain·Qᵀ has orthonormal rows,
  QQᵀ = I_m.

Signs are fixed so that diag(R) ≥ 0 (each Q column is multiplied by sign(R_jj), 0 → +1),
which makes Q unique for full-rank kernels. Biases are left as they are (they do not enter
the Jacobian). For a linear network whose widths never increase, the product of such
kernels has orthonormal columns, so every input–output Jacobian singular value is 1.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterator, Sequence

import keras
from keras import ops

from keras_tpp import cloning, layer_roles
from keras_tpp.graph import UnsupportedModelError



def orthp(
    model: keras.Model,
    layers: Sequence[str] | str | None = None,
    gain: float = 1.0,
) -> keras.Model:
    """A copy of ``model`` whose selected kernels are orthogonalized (OrthP).

    Args:
        model: a built Sequential or Functional model (typically the thin model after
            pruning surgery). It is never modified.
        layers: names of the layers to orthogonalize; default: every Dense layer (nested
            Sequential/Functional models included). Conv1D/2D/3D layers (groups = 1) are
            supported when named explicitly: their kernel (…, C_in, N) is treated as a
            (kh·kw·C_in, N) matrix.
        gain: factor applied to the orthogonal kernel, the activation's gain (1 for linear,
            e.g. √2 for ReLU); must be positive.

    Returns:
        A new, uncompiled model (:func:`keras_tpp.cloning.clone`) with kernel = gain·Q,
        Q as in the module docstring.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model; got {type(model)!r}.")
    if not model.built:
        raise ValueError("`model` must be built (call it once or give it an Input) before orthp.")
    if isinstance(gain, bool) or not isinstance(gain, numbers.Real) or not gain > 0:
        raise ValueError(f"`gain` must be a positive number; got {gain!r}.")
    chosen = _selected_paths(model, layers)

    selected = {id(layer) for path, layer in _walk(model) if path in chosen}

    def weights(layer: keras.layers.Layer) -> list | None:
        if id(layer) not in selected:
            return None
        return [keras.ops.convert_to_numpy(orthogonal_factor(v, gain)) if v is layer.kernel
                else keras.ops.convert_to_numpy(v) for v in layer.weights]

    try:
        return cloning.clone(model, weights=weights).model
    except UnsupportedModelError as err:  # subclassed models have no graph to clone
        raise ValueError(f"orthp needs a Sequential or Functional model it can clone: {err}") \
            from err


def orthogonal_factor(kernel: Any, gain: float = 1.0) -> Any:
    """gain·(sign-fixed QR factor) of a kernel (…, N) seen as a (prod(…), N) matrix.

    Returns a float64 tensor of the kernel's shape: orthonormal columns if
    prod(…) ≥ N, orthonormal rows otherwise (see the module docstring).
    """
    shape = tuple(kernel.shape)
    matrix = ops.reshape(ops.cast(kernel, "float64"), (-1, shape[-1]))
    rows, cols = int(matrix.shape[0]), int(matrix.shape[1])
    tall = rows >= cols
    q, r = ops.qr(matrix if tall else ops.transpose(matrix), mode="reduced")
    signs = ops.where(ops.diagonal(r) < 0, -1.0, 1.0)
    q = q * ops.cast(signs, q.dtype)[None, :]
    q = q if tall else ops.transpose(q)
    return ops.reshape(q * float(gain), shape)


def _walk(model: keras.Model, prefix: str = "") -> Iterator[tuple[str, keras.layers.Layer]]:
    """(path, layer) of every leaf layer of ``model``, nested models included (depth first);
    paths join names with "/" ("backbone/dense")."""
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            yield from _walk(layer, path + "/")
        else:
            yield path, layer


def _supported(layer: keras.layers.Layer) -> bool:
    if isinstance(layer, keras.layers.Dense):
        return True
    return isinstance(layer, layer_roles.CONV) and int(getattr(layer, "groups", 1)) == 1


def _selected_paths(model: keras.Model, layers: Sequence[str] | str | None) -> set[str]:
    """Validated set of layer paths to orthogonalize (names are accepted when unique)."""
    all_layers = dict(_walk(model))
    dense = [path for path, layer in all_layers.items() if isinstance(layer, keras.layers.Dense)]
    if layers is None:
        if not dense:
            raise ValueError("`model` has no Dense layer to orthogonalize.")
        chosen = dense
    else:
        if isinstance(layers, str):
            layers = [layers]
        if not isinstance(layers, Sequence) or not all(isinstance(n, str) for n in layers):
            raise ValueError(f"`layers` must be a list of layer names; got {layers!r}.")
        if not layers:
            raise ValueError("`layers` is empty; pass None to orthogonalize every Dense layer.")
        chosen = []
        for name in layers:
            hits = [name] if name in all_layers else [
                p for p, layer in all_layers.items() if layer.name == name]
            if not hits:
                raise ValueError(f"No layer named {name!r} in the model. Dense layers: {dense}.")
            if len(hits) > 1:
                raise ValueError(f"Layer name {name!r} is ambiguous ({hits}); use the full "
                                 "'outer/inner' path.")
            chosen.append(hits[0])
        unsupported = [p for p in chosen if not _supported(all_layers[p])]
        if unsupported:
            raise ValueError(
                f"orthp supports Dense and Conv1D/2D/3D (groups=1) layers only; got "
                f"{[(p, type(all_layers[p]).__name__) for p in unsupported]}. "
                f"Dense layers: {dense}."
            )
    for path in chosen:
        layer = all_layers[path]
        if getattr(layer, "lora_enabled", False):
            raise ValueError(f"Layer {path!r} has LoRA enabled; merge it before orthp.")
        if not str(layer.kernel.dtype).startswith(("float", "bfloat")):
            raise ValueError(
                f"Layer {path!r} has a {layer.kernel.dtype} kernel (quantized?); "
                "orthp needs a floating-point kernel."
            )
    return set(chosen)
