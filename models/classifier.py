"""Image classifier: a backbone nested as layer ``"backbone"`` plus a small head.

BatchNormalization layers run in inference mode whenever they are not
trainable (Keras 3 semantics), so a frozen backbone, and the BatchNorm layers
that :func:`unfreeze_top_blocks` keeps frozen, never update their statistics.
Only :func:`unfreeze_all`, for training from scratch, lets BatchNorm learn.
Training works in phases: :func:`freeze_backbone` to train the head, then
:func:`unfreeze_top_blocks` to fine-tune the top blocks at a lower learning rate.
The caller recompiles the model after every change of trainability.

Example:
    >>> model = build_classifier("small_cnn", num_classes=3, input_shape=(28, 28, 3),
    ...                          weights="none")
    >>> model.output_shape
    (None, 3)
    >>> freeze_backbone(model)
    >>> unfreeze_top_blocks(model, 1)
    ['block4_conv1']
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import keras

from medlens.models import multilabel as _multilabel  # noqa: F401  (registers the multi-label loss for loading)
from medlens.models import names
from medlens.models.backbones import backbone_blocks, build_backbone
from medlens.models.ordinal import CumulativeHead
from medlens.pipelines.errors import ConfigError

__all__ = [
    "HEAD_NORMS",
    "build_classifier",
    "freeze_backbone",
    "unfreeze_all",
    "get_backbone",
    "unfreeze_top_blocks",
]

logger = logging.getLogger(__name__)

BACKBONE_LAYER = "backbone"
HEAD_NORMS = names.HEAD_NORMS
_POOLING = {
    "avg": keras.layers.GlobalAveragePooling2D,
    "max": keras.layers.GlobalMaxPooling2D,
}


def build_classifier(
    backbone: str = "vgg16",
    num_classes: int = 2,
    input_shape: Sequence[int | None] = (224, 224, 3),
    weights: str | os.PathLike[str] | None = "imagenet",
    pooling: str = "avg",
    dropout: float = 0.3,
    dense_units: int = 128,
    name: str | None = None,
    head_norm: str = "batchnorm",
    multilabel: bool = False,
    ordinal: bool = False,
) -> keras.Model:
    """Build ``image → backbone → pooling → head → probabilities``.

    Head: global ``pooling``, ``BatchNormalization`` of the pooled features
    (``head_norm``), ``Dropout(dropout)``, ``Dense(dense_units, relu)`` and a second
    ``Dropout`` (both skipped when ``dense_units`` is 0), then ``Dense(1, sigmoid)``
    for two classes or ``Dense(num_classes, softmax)``; with ``multilabel``,
    ``Dense(num_classes, sigmoid)``: one independent probability per finding; with
    ``ordinal``, :class:`~medlens.models.ordinal.CumulativeHead`: ``P(grade ≥ k)`` for
    ``k = 1 … num_classes - 1``, never increasing in ``k``.

    Why the normalisation: pooled features of a real pretrained backbone are
    heavy-tailed and far from unit scale (VGG16 block5, avg-pooled: mean 3.5, sd 10.7,
    max above 300). A Glorot-initialised dense head on them starts with logits of
    sd ≈ 14, saturated sigmoids and dropout noise of the same size, and spends its
    epochs shrinking weights: on BreastMNIST it reached training AUC 0.61 after
    10 epochs, against 0.95 with the normalisation (docs/training.md).

    Args:
        backbone: A :data:`~medlens.models.backbones.BACKBONES` key.
        num_classes: Number of classes K ≥ 2.
        input_shape: ``(height, width, channels)`` of the preprocessed images.
        weights: Backbone weights, as for
            :func:`~medlens.models.backbones.build_backbone`.
        pooling: ``"avg"`` or ``"max"``.
        dropout: Dropout rate in ``[0, 1)``; 0 disables dropout.
        dense_units: Width of the hidden dense layer; 0 for none.
        name: Model name (default ``"{backbone}_classifier"``).
        head_norm: ``"batchnorm"`` (layer ``head_norm``, trained with the head) or
            ``"none"``.
        multilabel: ``num_classes`` findings, each present or not (see
            :mod:`medlens.models.multilabel` for the loss).
        ordinal: ``num_classes`` ordered grades (see :mod:`medlens.models.ordinal`).

    Returns:
        An uncompiled Functional model with input ``"image"``, the nested backbone
        layer ``"backbone"`` and output layer ``"probabilities"``.

    Raises:
        ConfigError: Invalid head settings, backbone name or input shape.
        WeightsError: Backbone weights unavailable or unfit.

    Example:
        >>> model = build_classifier("small_cnn", 2, (32, 32, 3), weights="none")
        >>> model.output_shape
        (None, 1)
    """
    if num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
    if pooling not in _POOLING:
        raise ConfigError(f"pooling must be 'avg' or 'max', got {pooling!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout}")
    if dense_units < 0:
        raise ConfigError(f"dense_units must be 0 or more, got {dense_units}")
    if head_norm not in HEAD_NORMS:
        raise ConfigError(f"head_norm must be one of {', '.join(HEAD_NORMS)}; got {head_norm!r}")

    base = build_backbone(backbone, input_shape, weights, model_name=BACKBONE_LAYER)
    inputs = keras.Input(tuple(input_shape), name="image")
    # No training=False here: frozen BatchNorm layers already run in inference mode, and
    # a backbone trained from scratch needs batch statistics to learn at all.
    x = base(inputs)
    x = _POOLING[pooling](name="pool")(x)
    if head_norm == "batchnorm":
        x = keras.layers.BatchNormalization(name="head_norm")(x)
    if dense_units:
        if dropout:
            x = keras.layers.Dropout(dropout, name="head_dropout1")(x)
        x = keras.layers.Dense(dense_units, activation="relu", name="head_dense")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="head_dropout2")(x)
    if ordinal:
        outputs = CumulativeHead(num_classes, name="probabilities")(x)
    elif multilabel:
        outputs = keras.layers.Dense(num_classes, activation="sigmoid", name="probabilities")(x)
    elif num_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probabilities")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=name or f"{backbone}_classifier")
    logger.debug("built %s with %d classes", model.name, num_classes)
    return model


def get_backbone(model: keras.Model) -> keras.Model:
    """The backbone nested in a classifier as the layer named ``"backbone"``.

    Args:
        model: A model from :func:`build_classifier` (or loaded from its file).

    Returns:
        The nested backbone model.

    Raises:
        ConfigError: ``model`` has no layer named ``"backbone"``.

    Example:
        >>> model = build_classifier("small_cnn", 2, (32, 32, 3), weights="none")
        >>> get_backbone(model).name
        'backbone'
    """
    try:
        return model.get_layer(BACKBONE_LAYER)
    except ValueError:
        raise ConfigError(f"model {model.name!r} has no layer named {BACKBONE_LAYER!r}") from None


def unfreeze_all(model: keras.Model) -> None:
    """Make the whole backbone trainable, BatchNorm included: training from scratch."""
    backbone = get_backbone(model)
    backbone.trainable = True
    for layer in backbone.layers:
        layer.trainable = True


def freeze_backbone(model: keras.Model) -> None:
    """Freeze every backbone layer; the head stays trainable. Recompile afterwards.

    Args:
        model: A model from :func:`build_classifier`.

    Example:
        >>> model = build_classifier("small_cnn", 2, (32, 32, 3), weights="none")
        >>> freeze_backbone(model)
        >>> get_backbone(model).trainable
        False
    """
    get_backbone(model).trainable = False


def unfreeze_top_blocks(model: keras.Model, n_blocks: int, backbone_name: str | None = None) -> list[str]:
    """Make the top ``n_blocks`` backbone blocks trainable, all else in it frozen.

    BatchNormalization layers always stay frozen (and run in inference mode).
    ``n_blocks`` larger than the number of blocks unfreezes them all; 0 leaves
    the backbone frozen. The head is not touched. Recompile afterwards.

    Args:
        model: A model from :func:`build_classifier`.
        n_blocks: How many blocks to unfreeze, counted from the top.
        backbone_name: The architecture (guessed from layer names when ``None``).

    Returns:
        Names of the backbone layers with weights that are now trainable.

    Raises:
        ConfigError: ``n_blocks`` is negative, or the backbone is unknown.

    Example:
        >>> model = build_classifier("vgg16", 2, (32, 32, 3), weights="none")
        >>> unfreeze_top_blocks(model, 1, "vgg16")
        ['block5_conv1', 'block5_conv2', 'block5_conv3']
    """
    if n_blocks < 0:
        raise ConfigError(f"the number of blocks to unfreeze must be 0 or more, got {n_blocks}")
    backbone = get_backbone(model)
    if n_blocks == 0:
        backbone.trainable = False
        return []
    blocks = backbone_blocks(backbone, backbone_name)
    selected = {layer for block in blocks[-n_blocks:] for layer in block}
    # Setting the model flag first resets every nested layer to trainable.
    backbone.trainable = True
    made_trainable: list[str] = []
    for layer in backbone.layers:
        trainable = layer.name in selected and not isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = trainable
        if trainable and layer.weights:
            made_trainable.append(layer.name)
    logger.info(
        "unfroze %d of %d backbone blocks (%d layers with weights)",
        min(n_blocks, len(blocks)),
        len(blocks),
        len(made_trainable),
    )
    return made_trainable
