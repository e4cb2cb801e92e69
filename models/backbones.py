"""Convolutional backbones: a registry, offline-safe weight loading and block splits.

Every backbone is a headless Keras Functional model (``include_top=False``) whose
output is a 4-D feature map. ``BACKBONES`` records, per architecture, how to build
it, how to preprocess ``0..255`` RGB images for it, which Keras ImageNet weights
file it uses, and how its layers group into ordered *blocks* (bottom to top) so
training can unfreeze the top blocks only.

ImageNet weights are looked up in the Keras cache (``$KERAS_HOME/models`` or
``~/.keras/models``) and loaded from there with no network access. When they are
missing, Keras may download them, unless ``MEDLENS_OFFLINE=1`` is set, in which case
a one-line :class:`~medlens.pipelines.errors.WeightsError` explains how to import the
file with ``medlens weights import FILE --arch NAME`` (:func:`import_weights`).

Weights files accepted wherever a path is given:

* a Keras 3 weights file (``*.weights.h5``) from ``backbone.save_weights``;
* a legacy Keras HDF5 weights file (``*.h5``), e.g. the official
  ``*_weights_tf_dim_ordering_tf_kernels_notop.h5`` or one written by
  ``model.save("x.h5")``.

The format is read from the file content, not trusted from the suffix.

Example:
    >>> backbone = build_backbone("small_cnn", (28, 28, 3), weights="none")
    >>> backbone.output.shape
    (None, 2, 2, 128)
    >>> [block[0] for block in backbone_blocks(backbone, "small_cnn")]
    ['block1_conv1', 'block2_conv1', 'block3_conv1', 'block4_conv1']
"""


from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import keras

from medlens.models.registry import BACKBONES, BackboneSpec, preprocess_function, small_cnn, spec_of
from medlens.models.weights import (
    keras_cache_dir,
    load_weights_file,
    offline,
    same_weights,
    sha256_of,
    weights_format,
    write_legacy_h5,
)
from medlens.pipelines.errors import ConfigError, WeightsError

__all__ = [
    "BACKBONES",
    "BackboneSpec",
    "backbone_blocks",
    "build_backbone",
    "guess_backbone_name",
    "import_weights",
    "keras_cache_dir",
    "preprocess_function",
    "small_cnn",
    "weights_cache_path",
]

logger = logging.getLogger(__name__)



def weights_cache_path(name: str) -> Path:
    """Where the ImageNet notop weights of backbone ``name`` live in the Keras cache.

    Args:
        name: A key of :data:`BACKBONES` that has ImageNet weights.

    Returns:
        ``keras_cache_dir() / "models" / <Keras file name>``.

    Raises:
        ConfigError: Unknown backbone name.
        WeightsError: The architecture has no ImageNet weights (``small_cnn``).

    Example:
        >>> weights_cache_path("vgg16").name
        'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'
    """
    spec = spec_of(name)
    if spec.weights_filename is None:
        raise WeightsError(f"{name} has no ImageNet weights; set model.weights to none or to a weights file")
    return keras_cache_dir() / "models" / spec.weights_filename




def _check_input_shape(spec: BackboneSpec, input_shape: Sequence[int | None]) -> tuple:
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ConfigError(f"input_shape must be (height, width, channels), got {shape}")
    if spec.has_imagenet and shape[2] != 3:
        raise ConfigError(
            f"backbone {spec.name} needs 3-channel input, got input_shape {shape} "
            "(grey images are replicated to 3 channels by the data pipeline)"
        )
    for size in shape[:2]:
        if size is not None and size < spec.min_size:
            raise ConfigError(
                f"backbone {spec.name} needs images of at least {spec.min_size} px, got input_shape {shape}"
            )
    return shape


def _imagenet_file(spec: BackboneSpec) -> Path:
    """The cached ImageNet file of ``spec``, downloading it unless offline."""
    target = weights_cache_path(spec.name)
    if target.is_file():
        return target
    advice = (
        f"ImageNet weights for {spec.name} are not in {target.parent} and could not be "
        f"downloaded (offline?). Download {spec.weights_filename} on a connected machine "
        f"and run: medlens weights import FILE --arch {spec.name}, or set model.weights "
        "to a .weights.h5/.h5 file or none."
    )
    if offline():
        raise WeightsError(advice)
    try:
        downloaded = keras.utils.get_file(
            spec.weights_filename,
            spec.weights_url,
            cache_subdir="models",
            cache_dir=str(keras_cache_dir()),
            file_hash=spec.weights_hash,
        )
    except Exception as error:  # network, HTTP, hash or disk errors alike
        logger.debug("download of %s failed: %s", spec.weights_url, error)
        raise WeightsError(advice) from None
    return Path(downloaded)


def build_backbone(
    name: str,
    input_shape: Sequence[int | None] = (224, 224, 3),
    weights: str | os.PathLike[str] | None = "imagenet",
    *,
    model_name: str | None = None,
) -> keras.Model:
    """Build a headless backbone, with ImageNet, random or file weights.

    Args:
        name: A key of :data:`BACKBONES`.
        input_shape: ``(height, width, channels)``; ImageNet architectures need
            3 channels and at least 32 px.
        weights: ``"imagenet"`` (from the Keras cache; downloaded unless
            ``MEDLENS_OFFLINE=1``), ``"none"``/``None`` (random initialisation) or a
            path to a ``.weights.h5`` or legacy ``.h5`` weights file.
        model_name: Name of the returned model (default: ``name``). Layer names
            inside are never changed, so block splits keep working.

    Returns:
        An uncompiled Functional model whose output is a 4-D feature map.

    Raises:
        ConfigError: Unknown backbone or unusable ``input_shape``.
        WeightsError: Weights unavailable, missing file, or a file that does not
            fit the architecture; the one-line message says how to fix it.

    Example:
        >>> backbone = build_backbone("vgg16", (32, 32, 3), weights="none")
        >>> backbone.output.shape
        (None, 1, 1, 512)
    """
    spec = spec_of(name)
    shape = _check_input_shape(spec, input_shape)
    model_name = model_name or name

    weights_file: Path | None = None
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        weights_file = None
    elif isinstance(weights, str) and weights.lower() == "imagenet":
        if not spec.has_imagenet:
            raise WeightsError(
                f"backbone {name} has no ImageNet weights; set model.weights to none "
                "or to a .weights.h5/.h5 file"
            )
        weights_file = _imagenet_file(spec)
    else:
        weights_file = Path(weights).expanduser()
        if not weights_file.is_file():
            raise WeightsError(f"weights file {weights_file} not found")

    model = spec.constructor(include_top=False, weights=None, input_shape=shape, name=model_name)
    if weights_file is not None:
        logger.info("loading %s weights from %s", name, weights_file)
        load_weights_file(model, weights_file, name)
    return model


def guess_backbone_name(backbone: keras.Model) -> str:
    """Recognise which registry architecture a (possibly renamed) backbone is.

    Args:
        backbone: A model built by :func:`build_backbone`.

    Returns:
        The :data:`BACKBONES` key.

    Raises:
        ConfigError: The layer names match no known architecture.

    Example:
        >>> guess_backbone_name(build_backbone("small_cnn", (32, 32, 3), "none"))
        'small_cnn'
    """
    names = {layer.name for layer in backbone.layers}
    for marker, arch in (
        ("post_bn", "resnet50v2"),
        ("conv5_block16_concat", "densenet121"),
        ("conv5_block3_out", "resnet50"),
        ("block5_conv4", "vgg19"),
        ("block5_conv3", "vgg16"),
        ("block1_bn", "small_cnn"),
    ):
        if marker in names:
            return arch
    raise ConfigError(f"model {backbone.name!r} is not a known medlens backbone")


def backbone_blocks(backbone: keras.Model, name: str | None = None) -> list[list[str]]:
    """Split a backbone's layers into ordered blocks, bottom to top.

    Blocks: VGG ``block1``..``block5``; ResNet50/ResNet50V2 the stem
    (``conv1``/``pool1``) then stages ``conv2``..``conv5`` (V2's ``post_bn`` and
    ``post_relu`` join ``conv5``); DenseNet121 the stem, then dense blocks
    ``conv2``..``conv5`` each with the transition (``pool2``..``pool4``) after it,
    the final ``bn``/``relu`` joining ``conv5``; small_cnn ``block1``..``block4``.
    Layers whose names match no block (auto-named padding) join the block before
    them; input layers belong to no block.

    Args:
        backbone: A model built by :func:`build_backbone`.
        name: Its architecture; guessed from layer names when ``None``.

    Returns:
        One list of layer names per block, the top block last.

    Raises:
        ConfigError: Unknown architecture, or a block with no layers.

    Example:
        >>> backbone = build_backbone("small_cnn", (32, 32, 3), "none")
        >>> backbone_blocks(backbone)[-1]
        ['block4_conv1', 'block4_bn', 'block4_relu', 'block4_pool']
    """
    spec = spec_of(name or guess_backbone_name(backbone))
    patterns = [re.compile(pattern) for _, pattern in spec.blocks]
    blocks: list[list[str]] = [[] for _ in spec.blocks]
    current = 0
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        for index, pattern in enumerate(patterns):
            if pattern.match(layer.name):
                current = index
                break
        blocks[current].append(layer.name)
    empty = [block for (block, _), names in zip(spec.blocks, blocks, strict=True) if not names]
    if empty:
        raise ConfigError(
            f"model {backbone.name!r} does not look like {spec.name}: no layers for "
            f"block(s) {', '.join(empty)}"
        )
    return blocks




def import_weights(file: str | os.PathLike[str], arch: str, *, overwrite: bool = False) -> Path:
    """Put a backbone weights file where ``weights: imagenet`` finds it offline.

    The file is validated by building ``arch`` (random init, headless, 32×32×3)
    and loading it, so a file for another architecture is rejected. A legacy
    ``.h5`` file (e.g. the official notop download) is copied byte for byte; a
    Keras 3 ``.weights.h5`` file is rewritten in the legacy layout Keras' own
    ``weights="imagenet"`` loader reads. The write is atomic (temporary file in the
    cache folder, then ``os.replace``).

    Args:
        file: The weights file.
        arch: A :data:`BACKBONES` key with ImageNet weights.
        overwrite: Replace an existing cache file that holds different weights.

    Returns:
        The destination, ``keras_cache_dir()/models/<Keras file name for arch>``.

    Raises:
        ConfigError: Unknown architecture.
        WeightsError: Missing file, wrong architecture, ``small_cnn``, or a
            different file already in the cache and ``overwrite`` is false.

    Example:
        import_weights("vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg16")
        # PosixPath('/home/me/.keras/models/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5')
    """
    spec = spec_of(arch)
    destination = weights_cache_path(arch)
    source = Path(file).expanduser()
    if not source.is_file():
        raise WeightsError(f"weights file {source} not found")
    kind = weights_format(source)
    validate_shape = (spec.min_size, spec.min_size, 3)
    model = build_backbone(arch, validate_shape, weights=source)

    if destination.exists() and not overwrite:
        if kind == "legacy" and sha256_of(destination) == sha256_of(source):
            logger.info("%s is already in the cache at %s", source, destination)
            return destination
        try:
            cached = build_backbone(arch, validate_shape, weights=destination)
            same = same_weights(model, cached)
        except WeightsError:
            same = False
        if same:
            logger.info("the weights of %s are already in %s", source, destination)
            return destination
        raise WeightsError(
            f"{destination} already holds different {arch} weights; "
            "import with overwrite (--overwrite) to replace it"
        )

    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent
    )
    os.close(handle)
    try:
        if kind == "legacy":
            shutil.copyfile(source, temporary)
        else:
            write_legacy_h5(model, Path(temporary))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; the cache is shared like Keras's
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("imported %s weights from %s to %s", arch, source, destination)
    return destination
