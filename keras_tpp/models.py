"""Reference architectures of the papers, as plain functional Keras models.

- :func:`cifar_resnet` — He et al.'s CIFAR ResNet (depth 6n+2: ResNet-20, -56, -110), basic
  blocks, 16/32/64 filters. Down-sampling shortcuts are 1×1 conv + BN projections ("option
  B"), which keeps the graph free of Lambda layers; ResNet-56 has 0.86 M parameters (the
  option-A zero-padding variant of the papers has 0.85 M).
- :func:`cifar_bottleneck_resnet` — the CIFAR variant of the ImageNet bottleneck ResNets
  (ResNet-50/101/152) used by the sparse-training papers (GraNet, RigL on CIFAR): a 3×3
  stem of 64 filters with stride 1 and no max-pooling, four stages of bottleneck blocks
  (64/128/256/512 × 4 output channels), global average pooling; ResNet-50 has 23.5 M
  trainable parameters for 10 classes.
- :func:`cifar_vgg` — VGG-11/13/16/19 with batch norm for CIFAR, global average pooling or a
  Flatten→Dense head.
- :func:`mlp_linear` — TPP's MLP-7-Linear (Wang & Fu, ICLR 2023): Dense 1024→100, five 100→100, 100→10, no
  activations.
- :func:`small_cnn` — a tiny conv net for quick starts and tests.

Layer names follow a fixed scheme so that name patterns select the published pruning sets,
e.g. ``"*_conv1"`` for the first conv of every ResNet block.
"""
from __future__ import annotations

import keras
from keras import layers

_VGG_CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512,
    ],
}


def cifar_resnet(
    depth: int = 56,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    width: int = 16,
) -> keras.Model:
    """He et al. (2016) CIFAR ResNet of ``depth`` = 6n + 2 layers.

    Block ``b`` of stage ``s`` (both 1-based) has layers ``stage{s}_block{b}_conv1``/``_bn1``/
    ``_conv2``/``_bn2``, a projection ``..._proj``/``_proj_bn`` where the shape changes, and the
    residual ``..._add``. Input: (H, W, 3) images; output: ``num_classes`` logits.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}.")
    blocks = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage in range(3):
        filters = width * 2**stage
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage + 1}_block{block + 1}"
            shortcut = x
            y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                              kernel_initializer="he_normal", name=f"{name}_conv1")(x)
            y = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn1")(y)
            y = layers.ReLU(name=f"{name}_relu1")(y)
            y = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                              kernel_initializer="he_normal", name=f"{name}_conv2")(y)
            y = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn2")(y)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False,
                                         kernel_initializer="he_normal",
                                         name=f"{name}_proj")(shortcut)
                shortcut = layers.BatchNormalization(
                    momentum=0.9, epsilon=1e-5, name=f"{name}_proj_bn")(shortcut)
            x = layers.Add(name=f"{name}_add")([y, shortcut])
            x = layers.ReLU(name=f"{name}_relu2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


_BOTTLENECK_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def cifar_bottleneck_resnet(
    depth: int = 50,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    width: int = 64,
) -> keras.Model:
    """A bottleneck ResNet-``depth`` (50, 101 or 152) for 32×32 images.

    The ImageNet ResNet's blocks with a CIFAR stem: one 3×3 conv of ``width`` filters,
    stride 1, no max-pooling. Stage ``s`` (1-based) has blocks of 1×1 (``width·2^(s-1)``) →
    3×3 (same, stride 2 in the first block of stages 2–4) → 1×1 (4× that) convs, each
    followed by batch norm; a 1×1 conv + BN projection where the shape changes.

    Layers ``stem_conv``/``stem_bn``; ``stage{s}_block{b}_conv1``/``_bn1``/``_conv2``/``_bn2``/
    ``_conv3``/``_bn3``, ``..._proj``/``_proj_bn`` and the residual ``..._add``; the head is
    ``classifier``. Output: ``num_classes`` logits.
    """
    if depth not in _BOTTLENECK_BLOCKS:
        raise ValueError(f"Bottleneck ResNet depth must be one of "
                         f"{sorted(_BOTTLENECK_BLOCKS)}, got {depth}.")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}.")

    def conv_bn(x, filters, kernel, strides, name, suffix):
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=f"{name}_conv{suffix}")(x)
        return layers.BatchNormalization(momentum=0.9, epsilon=1e-5,
                                         name=f"{name}_bn{suffix}")(x)

    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(width, 3, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name="stem_conv")(inputs)
    x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, blocks in enumerate(_BOTTLENECK_BLOCKS[depth]):
        filters = width * 2**stage
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            name = f"stage{stage + 1}_block{block + 1}"
            y = conv_bn(x, filters, 1, 1, name, 1)
            y = layers.ReLU(name=f"{name}_relu1")(y)
            y = conv_bn(y, filters, 3, strides, name, 2)
            y = layers.ReLU(name=f"{name}_relu2")(y)
            y = conv_bn(y, 4 * filters, 1, 1, name, 3)
            shortcut = x
            if strides != 1 or x.shape[-1] != 4 * filters:
                shortcut = layers.Conv2D(4 * filters, 1, strides=strides, use_bias=False,
                                         kernel_initializer="he_normal",
                                         name=f"{name}_proj")(x)
                shortcut = layers.BatchNormalization(
                    momentum=0.9, epsilon=1e-5, name=f"{name}_proj_bn")(shortcut)
            x = layers.Add(name=f"{name}_add")([y, shortcut])
            x = layers.ReLU(name=f"{name}_relu3")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}_cifar")


def cifar_vgg(
    depth: int = 19,
    num_classes: int = 100,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    head: str = "gap",
    width_multiplier: float = 1.0,
) -> keras.Model:
    """VGG-``depth`` with batch norm for CIFAR.

    Convs are named ``conv{i}`` / ``bn{i}`` (1-based). ``head="gap"`` ends with global average
    pooling and one Dense (the common CIFAR variant); ``head="flatten"`` keeps the last
    feature map, flattens it and applies Dense 512 → ``num_classes`` (``fc1``, ``classifier``).
    ``width_multiplier`` scales every conv's width (for tiny test models).
    """
    if depth not in _VGG_CONFIGS:
        raise ValueError(f"VGG depth must be one of {sorted(_VGG_CONFIGS)}, got {depth}.")
    if head not in ("gap", "flatten"):
        raise ValueError(f"head must be 'gap' or 'flatten', got {head!r}.")
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    conv_index = 0
    pool_index = 0
    for item in _VGG_CONFIGS[depth]:
        if item == "M":
            pool_index += 1
            x = layers.MaxPooling2D(2, name=f"pool{pool_index}")(x)
            continue
        conv_index += 1
        filters = max(1, int(round(item * width_multiplier)))
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal",
                          name=f"conv{conv_index}")(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn{conv_index}")(x)
        x = layers.ReLU(name=f"relu{conv_index}")(x)
    if head == "gap":
        x = layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(max(1, int(round(512 * width_multiplier))), name="fc1")(x)
        x = layers.BatchNormalization(name="fc1_bn")(x)
        x = layers.ReLU(name="fc1_relu")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name=f"vgg{depth}")


def mlp_linear(
    input_dim: int = 1024,
    width: int = 100,
    hidden_layers: int = 6,
    num_classes: int = 10,
) -> keras.Model:
    """TPP's MLP-7-Linear (Wang & Fu, ICLR 2023): Dense ``input_dim``→``width``, five ``width``→``width``,
    ``width``→``num_classes``; no activations (a deep *linear* network). Layers ``fc1``..``fc7``.
    """
    inputs = keras.Input((input_dim,), name="pixels")
    x = inputs
    for i in range(hidden_layers):
        x = layers.Dense(width, kernel_initializer="orthogonal", name=f"fc{i + 1}")(x)
    outputs = layers.Dense(num_classes, name=f"fc{hidden_layers + 1}")(x)
    return keras.Model(inputs, outputs, name="mlp_linear")


def small_cnn(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    widths: tuple[int, ...] = (16, 32, 64),
) -> keras.Model:
    """A tiny conv net: per stage conv3×3-BN-ReLU + max-pool, then GAP and a Dense head.

    Layers ``conv{i}``/``bn{i}``; the head is ``classifier``. Output: logits.
    """
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for i, filters in enumerate(widths, start=1):
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal",
                          name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="classifier")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


#: SPEC §1's ResNet-50 (ImageNet) presets, named by their MAC reduction: pruning ratios of
#: conv1 and conv2 of every bottleneck in Keras' stages conv2_x, conv3_x, conv4_x, conv5_x.
RESNET50_PRESETS: dict[str, tuple[float, float, float, float]] = {
    "1.49x": (0.3, 0.3, 0.3, 0.14),
    "2.31x": (0.6, 0.6, 0.6, 0.21),
    "2.56x": (0.74, 0.74, 0.6, 0.21),
    "3.06x": (0.68, 0.68, 0.68, 0.5),
}


def resnet50_ratios(preset: str | tuple[float, float, float, float] = "2.31x") -> dict[str, float]:
    """``pruning_ratio`` for ``keras.applications.ResNet50``: {layer pattern: ratio}.

    Args:
        preset: a key of :data:`RESNET50_PRESETS` or four per-stage ratios (conv2_x..conv5_x),
            applied to the first two convs of every bottleneck
            (``conv{stage}_block*_{1,2}_conv``; the block-final convs and shortcuts stay).
    Returns:
        {pattern: ratio}, accepted by prepare, make_plan and prune.

    Example:
        >>> thin = keras_tpp.prune(keras.applications.ResNet50(weights=None),
        ...                        keras_tpp.models.resnet50_ratios("2.31x"))  # 2.31× fewer MACs
    """
    if isinstance(preset, str):
        if preset not in RESNET50_PRESETS:
            raise ValueError(f"Unknown ResNet-50 preset {preset!r}; choose from "
                             f"{', '.join(RESNET50_PRESETS)} or give four ratios.")
        preset = RESNET50_PRESETS[preset]
    if len(preset) != 4:
        raise ValueError(f"A ResNet-50 preset has four per-stage ratios, got {preset!r}.")
    return {f"conv{stage}_block*_{conv}_conv": float(ratio)
            for stage, ratio in zip(range(2, 6), preset) for conv in (1, 2)}
