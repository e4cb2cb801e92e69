"""Multi-device training on existing engines: tf.distribute on TensorFlow, Keras's distribution API on JAX.

``train.distribution`` picks the engine:

- ``none``: one device (the default).
- ``mirrored``: synchronous data parallelism on one machine. TensorFlow:
  ``tf.distribute.MirroredStrategy`` over all local GPUs, or, without GPUs, over
  ``train.devices`` logical CPU devices (useful to test the set-up, and on many-core CPUs).
  JAX: ``keras.distribution.DataParallel`` over the local devices.
- ``multi_worker`` (TensorFlow's ``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``) is
  refused with a clear error: it fails inside Keras 3.15's TensorFlow trainer (see
  :func:`setup_distribution`).

``data.batch_size`` is the **global** batch: each step splits it across the replicas. With
``train.scale_learning_rate: true`` the learning rates are multiplied by the number of
replicas (the linear scaling rule, for when you also multiply the batch size); by default
they are used as written. ``train.mixed_precision`` (``mixed_float16`` on GPUs,
``mixed_bfloat16`` on recent CPUs/TPUs) sets Keras's global dtype policy; it stays off unless
asked for, and ``mixed_float16`` is refused on a CPU, where it only slows training down.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import keras

from medlens.pipelines.errors import ConfigError

__all__ = ["Distribution", "setup_distribution"]

log = logging.getLogger(__name__)


class Distribution:
    """The active strategy: a context to build and compile models in, and facts about it."""

    def __init__(self, kind: str = "none", strategy: Any = None, replicas: int = 1, chief: bool = True):
        self.kind = kind
        self.strategy = strategy
        self.replicas = replicas
        self.chief = chief

    def scope(self) -> Any:
        """Build, load and compile models inside this."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def release(self) -> None:
        """Stop distributing new models (JAX's distribution is global); TF strategies are scoped."""
        if keras.backend.backend() == "jax" and self.kind != "none":
            keras.distribution.set_distribution(None)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "replicas": self.replicas, "chief": self.chief,
                "backend": keras.backend.backend()}


def _logical_cpus(count: int) -> None:
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing < count:
            raise ConfigError(f"train.devices={count} logical CPUs must be set before TensorFlow starts; "
                              f"it already runs with {existing} (start a new process)") from None


def setup_distribution(kind: str, *, devices: int = 0, mixed_precision: str = "none") -> Distribution:
    """Create the strategy for ``train.distribution`` (see the module docstring).

    Raises:
        ConfigError: An unknown kind, a backend that cannot do it, a missing ``TF_CONFIG``,
            or ``mixed_float16`` on a CPU.
    """
    backend = keras.backend.backend()
    if mixed_precision not in ("none", ""):
        gpus = _gpu_count(backend)
        if mixed_precision == "mixed_float16" and gpus == 0:
            raise ConfigError("train.mixed_precision=mixed_float16 needs a GPU; on a CPU it only slows training "
                              "down (use none, or mixed_bfloat16 on CPUs with bfloat16 support)")
        keras.mixed_precision.set_global_policy(mixed_precision)
    else:
        keras.mixed_precision.set_global_policy("float32")
    if kind == "none":
        return Distribution()
    if backend == "jax":
        if kind != "mirrored":
            raise ConfigError("on the JAX backend train.distribution can be none or mirrored (DataParallel)")
        import jax

        local = jax.devices()
        distribution = keras.distribution.DataParallel(devices=local)
        keras.distribution.set_distribution(distribution)
        return Distribution("mirrored", None, len(local))
    if backend != "tensorflow":
        raise ConfigError(f"train.distribution={kind} needs the tensorflow or jax backend, not {backend}")
    import tensorflow as tf

    if kind == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            strategy = tf.distribute.MirroredStrategy()
        else:
            count = max(2, devices or 2)
            _logical_cpus(count)
            names = [d.name for d in tf.config.list_logical_devices("CPU")][:count]
            # NCCL is GPU-only; CPU replicas reduce through the host.
            strategy = tf.distribute.MirroredStrategy(names, cross_device_ops=tf.distribute.ReductionToOneDevice())
        return Distribution("mirrored", strategy, strategy.num_replicas_in_sync)
    if kind == "multi_worker":
        # tf.distribute.MultiWorkerMirroredStrategy fails inside Keras 3.15's TensorFlow trainer, twice
        # over: before the first step it all-reduces a data batch across workers to build the model
        # (ValueError: Attempt to convert a value (PerReplica…)), and once past that (building from
        # the local batch) its metric reduction calls strategy.reduce("MEAN", scalar, axis=0)
        # (ValueError: Invalid reduction dimension 0). Refused rather than offered broken.
        raise ConfigError("train.distribution=multi_worker does not work with Keras 3's TensorFlow trainer yet "
                          "(MultiWorkerMirroredStrategy fails before the first step); use mirrored on one machine")
    raise ConfigError(f"train.distribution must be none or mirrored, got {kind!r}")


def _gpu_count(backend: str) -> int:
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return len([d for d in jax.devices() if d.platform == "gpu"])
    if backend == "torch":
        import torch

        return torch.cuda.device_count()
    return 0
