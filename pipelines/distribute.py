"""Multi-device training on existing engines: tf.distribute on TensorFlow, Keras's distribution API on JAX.

``train.distribution`` picks the engine:

- ``none``: one device (the default).
- ``mirrored``: synchronous data parallelism on one machine. TensorFlow:
  ``tf.distribute.MirroredStrategy`` over all local GPUs, or, without GPUs, over
  ``train.devices`` logical CPU devices (useful to test the set-up, and on many-core CPUs).
  JAX: ``keras.distribution.DataParallel`` over the local devices.
- ``multi_worker``: synchronous data parallelism over several machines (or processes) with
  TensorFlow's ``MultiWorkerMirroredStrategy``, or on JAX with ``jax.distributed`` and
  ``keras.distribution.DataParallel`` over every process's devices, each process feeding its
  part of every global batch (:class:`~medlens.pipelines.training.phases.EvenBatches`); both
  are configured from the ``TF_CONFIG`` environment
  variable that every worker gets (same cluster, its own ``task.index``). Every worker runs the
  same ``medlens train`` command on the same data; each reads its slice of every global batch.
  The chief (``task.type: chief``, or worker 0 when the cluster has no chief) writes the run
  directory; the other workers write theirs to a scratch directory that is removed at the end
  (their checkpoints exist only so that saving stays in step, as TensorFlow requires).
  ``--resume`` reads the chief's run directory on every worker, so it must be on a filesystem
  all workers see. Keras 3's TensorFlow trainer has two bugs with this strategy
  (tensorflow/tensorflow#72388); :func:`_patch_keras_for_multi_worker` fixes them.

``data.batch_size`` is the **global** batch: each step splits it across the replicas. With
``train.scale_learning_rate: true`` the learning rates are multiplied by the number of
replicas (the linear scaling rule, for when you also multiply the batch size); by default
they are used as written. ``train.mixed_precision`` (``mixed_float16`` on GPUs,
``mixed_bfloat16`` on recent CPUs/TPUs) sets Keras's global dtype policy; it stays off unless
asked for, and ``mixed_float16`` is refused on a CPU, where it only slows training down.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
from typing import Any

import keras

from medlens.pipelines.errors import ClusterError, ConfigError

__all__ = ["Distribution", "setup_distribution", "WorkerRole", "worker_role", "cluster_failure"]

log = logging.getLogger(__name__)


class Distribution:
    """The active strategy: a context to build and compile models in, and facts about it."""

    def __init__(self, kind: str = "none", strategy: Any = None, replicas: int = 1, chief: bool = True,
                 process: tuple[int, int] = (0, 1)):
        self.kind = kind
        self.strategy = strategy
        self.replicas = replicas
        self.chief = chief
        #: ``(index, count)`` of the JAX processes feeding each global batch (TensorFlow shards for itself).
        self.process = process

    def scope(self) -> Any:
        """Build, load and compile models inside this."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def release(self) -> None:
        """Stop distributing new models (JAX's distribution is global); TF strategies are scoped.

        JAX processes of a ``multi_worker`` run also leave the cluster together here, once training
        is over, so that the chief can evaluate alone while the others exit.
        """
        if keras.backend.backend() == "jax" and self.kind != "none":
            keras.distribution.set_distribution(None)
            if self.process[1] > 1:
                import jax

                jax.distributed.shutdown()
                self.process = (0, 1)

    def abandon(self) -> None:
        """After a lost worker: end this process at exit without leaving the cluster in order.

        JAX's shutdown at exit would wait for the lost process (about a minute) and then abort with a
        C++ stack trace; this process exits with status 2 instead, after what it has printed.
        TensorFlow needs nothing.
        """
        if keras.backend.backend() == "jax" and self.process[1] > 1:
            atexit.register(_leave, 2)

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


def setup_distribution(kind: str, *, devices: int = 0, mixed_precision: str = "none",
                       join_timeout: float = 600.0, role: WorkerRole | None = None) -> Distribution:
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
        import jax

        if kind not in ("mirrored", "multi_worker"):
            raise ConfigError(f"train.distribution must be none, mirrored or multi_worker, got {kind!r}")
        process = (0, 1)
        if kind == "multi_worker":
            role = role or worker_role(kind)
            _join_jax(role, join_timeout)
            process = (role.index, role.workers)
        devices = jax.devices()  # every process's devices once the cluster has formed
        # medlens's datasets are Python ones; each process keeps its part of a batch (EvenBatches).
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
        if kind == "multi_worker":
            log.info("JAX process %d of %d (%s); %d devices in all", role.index, role.workers,
                     "chief" if role.chief else "not chief", len(devices))
            return Distribution(kind, None, len(devices), chief=role.chief, process=process)
        return Distribution(kind, None, len(devices))
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
        role = role or worker_role(kind)
        _patch_keras_for_multi_worker()
        with _JoinWatchdog(join_timeout, role):
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        log.info("worker %d of %d (%s); %d replicas in sync", role.index, role.workers,
                 "chief" if role.chief else "not chief", strategy.num_replicas_in_sync)
        return Distribution("multi_worker", strategy, strategy.num_replicas_in_sync, chief=role.chief)
    raise ConfigError(f"train.distribution must be none, mirrored or multi_worker, got {kind!r}")


def _join_jax(role: WorkerRole, join_timeout: float) -> None:
    """Form the JAX cluster: process ``role.index`` of ``role.workers``, the first address coordinating.

    ``keras.distribution.initialize`` does the same but cannot pass a time limit; JAX's own limit
    is set past ``join_timeout`` so that the watchdog's one-line message comes first. JAX on CPUs
    all-reduces through gloo (its default since 0.4.3x), so this works on CPU-only machines too.
    """
    import jax

    with _JoinWatchdog(join_timeout, role):
        jax.distributed.initialize(coordinator_address=role.addresses[0], num_processes=role.workers,
                                   process_id=role.index, initialization_timeout=int(join_timeout) + 60)


class WorkerRole:
    """This process's place in a ``TF_CONFIG`` cluster: ``index`` of ``workers``, and whether it is chief."""

    def __init__(self, index: int = 0, workers: int = 1, chief: bool = True, addresses: tuple[str, ...] = ()):
        self.index, self.workers, self.chief, self.addresses = index, workers, chief, addresses


# Runs beside a worker while it joins the cluster. TensorFlow waits for every worker without a
# time limit and holds the GIL while it waits, so no thread in the worker can give up for it.
_WATCHDOG = r"""
import os, select, signal, sys
parent, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([sys.stdin], [], [], timeout)[0]:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    try:
        os.kill(parent, signal.SIGKILL)
    except ProcessLookupError:
        pass
"""


class _JoinWatchdog:
    """Ends this process with a clear message if the cluster has not assembled within ``timeout`` seconds."""

    def __init__(self, timeout: float, role: WorkerRole):
        others = [a for i, a in enumerate(role.addresses) if i != role.index]
        self.timeout = timeout
        self.message = (f"medlens: error: train.distribution=multi_worker: not every worker joined within "
                        f"{timeout:g} s (this is worker {role.index} of {role.workers}; waiting for "
                        f"{', '.join(others) or 'the others'}). Start the same command with its own "
                        "TF_CONFIG task index on every address, check the ports are reachable, or raise "
                        "train.join_timeout.")
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> _JoinWatchdog:
        self.process = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.timeout),
                                         self.message], stdin=subprocess.PIPE)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.close()  # joined (or failed otherwise): the watchdog leaves quietly
        self.process.wait(timeout=30)


def cluster_failure(exc: BaseException, run_dir: Any) -> ClusterError | None:
    """The one-line error for a worker that left a multi-worker run mid-way (None: not that kind of error)."""
    detail = _jax_peer_lost(exc) if keras.backend.backend() == "jax" else _tf_peer_lost(exc)
    if detail is None:
        return None
    return ClusterError(f"train.distribution=multi_worker stopped: a worker left the cluster ({detail}). The last finished "
                        f"epoch is checkpointed in {run_dir}; start every worker again with "
                        f"`medlens train --resume {run_dir}`")


def _tf_peer_lost(exc: BaseException) -> str | None:
    import tensorflow as tf

    if not isinstance(exc, (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.DeadlineExceededError,
                            tf.errors.CancelledError)):
        return None
    text = getattr(exc, "message", str(exc))
    lost = sorted({line.strip() for line in text.splitlines() if line.strip().startswith("/job:")})
    if lost:
        return f"no heartbeat from {', '.join(lost)}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first.split("aborted by:", 1)[-1].strip()[:200]


# What JAX raises when a peer is gone: gloo's collectives fail ("Gloo AllReduce failed: [...pair.cc:547]
# Connection closed by peer [127.0.0.1]:10663"), or the coordination service stops answering.
_JAX_LOST = re.compile(r"Gloo \w+ failed:\s*(?:\[[^\]]*\]\s*)?(?P<gloo>[^\n]+)|(?P<service>Task \d+ heartbeat timeout"
                       r"|coordination service has shut down)")


def _jax_peer_lost(exc: BaseException) -> str | None:
    if not isinstance(exc, (ValueError, RuntimeError)):
        return None
    found = _JAX_LOST.search(str(exc))
    return None if found is None else (found["gloo"] or found["service"]).strip()[:200]


def _leave(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def worker_role(kind: str, environ: Any = None) -> WorkerRole:
    """Read ``TF_CONFIG`` for ``train.distribution=multi_worker`` (any other kind: a lone chief).

    ``TF_CONFIG`` is JSON: ``{"cluster": {"worker": ["host:port", ...], "chief": [...]?},
    "task": {"type": "worker", "index": 0}}``. The chief writes the run; without a ``chief``
    entry, worker 0 is the chief. The JAX backend reads the same variable: process ``i`` is the
    ``i``-th address (chief first), and the first address is JAX's coordinator.

    Raises:
        ConfigError: ``TF_CONFIG`` missing, not JSON, or not naming this task in its cluster.
    """
    if kind != "multi_worker":
        return WorkerRole()
    if keras.backend.backend() not in ("tensorflow", "jax"):
        raise ConfigError(f"train.distribution=multi_worker needs the TensorFlow or JAX backend, "
                          f"not {keras.backend.backend()}; on one machine use mirrored")
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    where = "TF_CONFIG (the environment variable train.distribution=multi_worker reads its cluster from)"
    if not raw.strip():
        raise ConfigError(f"{where} is not set; every worker needs it, e.g. "
                          '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
                          '"index": 0}} (see docs/scale-out.md)')
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(cluster.get("worker", []), list) or \
            not any(isinstance(v, list) and v for v in cluster.values()):
        raise ConfigError(f'{where} needs "cluster": {{"worker": ["host:port", ...]}}')
    unknown = sorted(set(cluster) - {"worker", "chief"})
    if unknown:
        raise ConfigError(f"{where}: cluster job {unknown[0]!r} is not used by MultiWorkerMirroredStrategy "
                          "(only chief and worker)")
    for job, addresses in cluster.items():
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            if not host or not port.isdigit():
                raise ConfigError(f"{where}: {job} address {address!r} is not host:port")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise ConfigError(f'{where} needs "task": {{"type": one of {sorted(cluster)}, "index": N}}')
    index = task.get("index", 0)
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task["type"]]):
        raise ConfigError(f"{where}: task index {index!r} is not in 0..{len(cluster[task['type']]) - 1} "
                          f"for the {len(cluster[task['type']])} {task['type']} address(es)")
    chiefs = len(cluster.get("chief", []))
    workers = chiefs + len(cluster.get("worker", []))
    position = index if task["type"] == "chief" else chiefs + index
    chief = task["type"] == "chief" or (chiefs == 0 and index == 0)
    addresses = tuple(cluster.get("chief", [])) + tuple(cluster.get("worker", []))
    return WorkerRole(position, workers, chief, tuple(str(a) for a in addresses))


def _patch_keras_for_multi_worker() -> None:
    """Fix Keras 3's TensorFlow trainer for ``MultiWorkerMirroredStrategy`` (tensorflow/tensorflow#72388).

    1. Before the first step ``fit`` builds the model's metric and optimizer state from one
       batch of the distributed dataset, which it gets by all-reducing the batch across
       workers (``strategy.reduce("MEAN", batch)``); with this strategy that fails ("Attempt to
       convert a value (PerReplica…)"). Only the batch's shapes and dtypes matter, so the fix
       builds from this worker's local part of the batch.
    2. Each step's logs are reduced across workers with ``strategy.reduce("MEAN", v, axis=0)``,
       which fails on the scalar losses and metrics ("Invalid reduction dimension 0"). The
       fix averages them element-wise over the replicas (``axis=None``), which is what
       ``MirroredStrategy`` does on one machine. Epoch logs (what checkpoints, early
       stopping and ``history.csv`` use) are read from the metrics' synchronised state and
       are the same on every worker.

    Both are installed once, and only when ``train.distribution=multi_worker``; they touch
    nothing for other strategies.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    if getattr(tf_trainer, "_medlens_multi_worker_fix", False):
        return
    needed = ("reduce_per_replica", "_collective_all_reduce_multi_worker", "TensorFlowTrainer")
    if not all(hasattr(tf_trainer, name) for name in needed) or \
            not hasattr(tf_trainer.TensorFlowTrainer, "_maybe_symbolic_build"):
        raise ConfigError(f"train.distribution=multi_worker: Keras {keras.__version__}'s TensorFlow trainer "
                          "is not the one medlens was tested with (3.6-3.15); use mirrored or pin keras<=3.15")
    import tensorflow as tf

    reduce_per_replica = tf_trainer.reduce_per_replica
    multi_worker = tf_trainer._collective_all_reduce_multi_worker

    def reduce_logs(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    maybe_symbolic_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build

    def symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> None:
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or not multi_worker(strategy):
            return maybe_symbolic_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            batch = next(batches)
            data_batch = tree.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v, batch)
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    tf_trainer.reduce_per_replica = reduce_logs
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = symbolic_build
    tf_trainer._medlens_multi_worker_fix = True


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
