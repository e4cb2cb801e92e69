"""Segmentation GAN (V-GAN, Son et al. 2017): a U-Net generator and a pair discriminator.

The generator is a U-Net (:func:`~medlens.models.unet.build_unet`) mapping an image
to a mask; the discriminator (:func:`build_discriminator`) sees the image and a mask
concatenated on channels and outputs real/fake logits, one map of patch logits
(PatchGAN) or one logit per image. :class:`SegGAN` trains both with ``fit``:

* one generator forward pass ``pred = G(image)``;
* the discriminator scores real pairs ``(image, mask)`` and fake pairs
  ``(image, pred)`` in one batch; ``d_loss`` is the mean of BCE(real → 1) and
  BCE(fake → 0), and only the discriminator's variables follow its gradient;
* ``g_loss = seg_loss(mask, pred) + adversarial_weight · BCE(D(image, pred) → 1)``,
  and only the generator's variables follow its gradient.

Batches are ``(image, mask)`` or ``(image, mask, fov)``: the FOV weight is the
``sample_weight`` of the segmentation loss and metrics, and both masks are multiplied
by it before the discriminator sees them, so nothing outside the FOV tells real
from fake.

Backends: ``train_step``/``test_step`` have a TensorFlow branch (``tf.GradientTape``;
TensorFlow is imported inside it) and a JAX branch (stateless, as in keras.io's
"customizing fit() with JAX": ``train_step(state, data)`` returns the new state).
PyTorch raises ``NotImplementedError``. The two optimizers live on the model as
``g_optimizer`` and ``d_optimizer``; ``model.optimizer`` is a thin wrapper whose
``variables`` are both optimizers' variables, which is what Keras' JAX trainer
threads through its jitted state.

Saving and resuming: ``SegGAN`` has ``get_config``/``from_config`` (generator and
discriminator serialised as nested Functional models) and a compile config holding
both optimizers, so ``gan.save("gan.keras")`` and ``keras.saving.load_model`` give
back a compiled GAN with the same weights *and optimizer states*: ``fit`` continues
exactly where it stopped. ``save_weights``/``load_weights`` on a compiled GAN also
carry both optimizers. A run directory saves the generator alone as ``model.keras``
(``gan.generator.save(...)``, a plain Functional U-Net, so batch segmentation does
not care which model trained it) plus the full GAN for resuming.

Trainability: the optimizers are built for the generator's and discriminator's
trainable variables when :meth:`SegGAN.compile` runs; after freezing or unfreezing
layers (e.g. :func:`~medlens.models.unet.freeze_encoder`), compile again with new
optimizers.

Example:
    >>> from medlens.models.unet import build_unet
    >>> generator = build_unet((32, 32, 1), depth=2, filters=4)
    >>> discriminator = build_discriminator((32, 32, 1), filters=4, depth=2)
    >>> gan = SegGAN(generator, discriminator, seg_loss="bce_dice", adversarial_weight=0.1)
    >>> gan.compile(g_optimizer=keras.optimizers.Adam(1e-3), d_optimizer=keras.optimizers.Adam(1e-4))
    >>> # gan.fit(dataset_of_image_mask_pairs, epochs=10); gan.generator.save("model.keras")
"""

from __future__ import annotations

import logging
from typing import Any

import keras
from keras import ops

from medlens.models.discriminator import build_discriminator
from medlens.models.losses import get_loss, pixel_weights
from medlens.models.metrics import DiceScore, IoUScore
from medlens.pipelines.errors import ConfigError

__all__ = ["SegGAN", "build_discriminator"]

logger = logging.getLogger(__name__)



class _PairedOptimizer(keras.optimizers.Optimizer):
    """Presents the generator's and discriminator's optimizers to Keras as one.

    Keras' JAX trainer threads ``model.optimizer.variables`` through its jitted
    state and assigns them back after ``fit``; exposing both optimizers' variables
    here keeps both states in that loop. The members are built and saved by
    :class:`SegGAN` itself (as ``g_optimizer``/``d_optimizer``), so this wrapper
    builds and saves nothing.
    """

    def __init__(self, g_optimizer: keras.optimizers.Optimizer, d_optimizer: keras.optimizers.Optimizer):
        super().__init__(learning_rate=0.0, name="seggan_optimizers")
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        self.built = True

    @property
    def variables(self) -> list:
        return [*self.g_optimizer.variables, *self.d_optimizer.variables]

    @property
    def iterations(self):
        return self.g_optimizer.iterations

    @property
    def learning_rate(self):
        """The generator's learning rate (what history and reduce-on-plateau read)."""
        return self.g_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value) -> None:
        """Scale both optimizers by ``value / generator rate``: the D/G learning-rate ratio is kept."""
        if "g_optimizer" not in self.__dict__:  # Optimizer.__init__ sets its own rate first
            keras.optimizers.Optimizer.learning_rate.fset(self, value)
            return
        current = float(ops.convert_to_numpy(self.g_optimizer.learning_rate))
        factor = float(value) / current if current > 0 else 1.0
        d_rate = float(ops.convert_to_numpy(self.d_optimizer.learning_rate))
        self.g_optimizer.learning_rate = float(value)
        self.d_optimizer.learning_rate = d_rate * factor

    def build(self, variables) -> None:
        self.built = True

    def save_own_variables(self, store) -> None:
        """Nothing: the member optimizers are saved as the model's attributes."""

    def load_own_variables(self, store) -> None:
        """Nothing: the member optimizers are loaded as the model's attributes."""


def _bce_logits(target: float, logits):
    return ops.mean(ops.binary_crossentropy(ops.full_like(logits, target), logits, from_logits=True))


@keras.saving.register_keras_serializable(package="medlens")
class SegGAN(keras.Model):
    """Adversarially trained segmentation model; ``call`` (and ``predict``) is the generator.

    Args:
        generator: A segmentation model ``image → mask probabilities`` (a U-Net).
        discriminator: A model ``concat([image, mask], -1) → logits``
            (:func:`build_discriminator`).
        seg_loss: Segmentation loss: a name for :func:`~medlens.models.losses.get_loss`
            or a Keras loss.
        adversarial_weight: λ in ``g_loss = seg_loss + λ · adversarial loss``.
        **kwargs: Passed to :class:`keras.Model` (``name``...).

    Attributes:
        generator: The segmentation model, for inference and for ``model.keras``.
        discriminator: The pair discriminator.
        g_optimizer, d_optimizer: Set by :meth:`compile`.

    Logs of ``fit``: ``g_loss``, ``d_loss``, ``seg_loss``, ``adv_loss``, ``dice``,
    ``iou``; of ``evaluate`` (and ``val_*`` in ``fit``): ``seg_loss``, ``dice``, ``iou``.

    Example:
        >>> from medlens.models.unet import build_unet
        >>> gan = SegGAN(build_unet((32, 32, 1), depth=2, filters=4),
        ...              build_discriminator((32, 32, 1), filters=4, depth=2))
        >>> gan.compile()
        >>> gan.generator.name
        'unet'
    """

    def __init__(
        self,
        generator: keras.Model,
        discriminator: keras.Model,
        seg_loss: str | keras.losses.Loss | dict = "bce_dice",
        adversarial_weight: float = 0.1,
        **kwargs: Any,
    ):
        kwargs.setdefault("name", "seggan")
        super().__init__(**kwargs)
        if adversarial_weight < 0:
            raise ConfigError(f"adversarial_weight must be 0 or more, got {adversarial_weight}")
        self.generator = generator
        self.discriminator = discriminator
        if isinstance(seg_loss, str):
            self.seg_loss_fn = get_loss(seg_loss)
        elif isinstance(seg_loss, dict):
            self.seg_loss_fn = keras.saving.deserialize_keras_object(seg_loss)
        else:
            self.seg_loss_fn = seg_loss
        self.adversarial_weight = float(adversarial_weight)
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.seg_loss_tracker = keras.metrics.Mean(name="seg_loss")
        self.adv_loss_tracker = keras.metrics.Mean(name="adv_loss")
        self.dice_metric = DiceScore(name="dice")
        self.iou_metric = IoUScore(name="iou")
        self.g_optimizer: keras.optimizers.Optimizer | None = None
        self.d_optimizer: keras.optimizers.Optimizer | None = None
        # Generator and discriminator are built Functional models: nothing left to build.
        self.built = True

    # ----------------------------------------------------------------- Keras API
    def call(self, inputs, training=None):
        return self.generator(inputs, training=training)

    def compile(
        self,
        g_optimizer: keras.optimizers.Optimizer | str | None = None,
        d_optimizer: keras.optimizers.Optimizer | str | None = None,
        *,
        run_eagerly: bool = False,
        jit_compile: bool | str = "auto",
        steps_per_execution: int = 1,
    ) -> None:
        """Set the two optimizers (default ``Adam(2e-4, beta_1=0.5)`` each) and build them.

        Args:
            g_optimizer: Generator optimizer (instance or Keras name).
            d_optimizer: Discriminator optimizer; must be a different object.
            run_eagerly: As for :meth:`keras.Model.compile`.
            jit_compile: As for :meth:`keras.Model.compile`.
            steps_per_execution: As for :meth:`keras.Model.compile`.

        Raises:
            ConfigError: The same optimizer object given twice.
        """
        g_optimizer = keras.optimizers.get(g_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5))
        d_optimizer = keras.optimizers.get(d_optimizer or keras.optimizers.Adam(2e-4, beta_1=0.5))
        if g_optimizer is d_optimizer:
            raise ConfigError("the generator and the discriminator need two different optimizer objects")
        if not g_optimizer.built:
            g_optimizer.build(self.generator.trainable_variables)
        if not d_optimizer.built:
            d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer = g_optimizer
        self.d_optimizer = d_optimizer
        super().compile(
            optimizer=_PairedOptimizer(g_optimizer, d_optimizer),
            run_eagerly=run_eagerly,
            jit_compile=jit_compile,
            steps_per_execution=steps_per_execution,
        )

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [
            self.g_loss_tracker,
            self.d_loss_tracker,
            self.seg_loss_tracker,
            self.adv_loss_tracker,
            self.dice_metric,
            self.iou_metric,
        ]

    def train_step(self, *args):
        backend = keras.backend.backend()
        if backend == "tensorflow":
            return self._tf_train_step(*args)
        if backend == "jax":
            return self._jax_train_step(*args)
        raise NotImplementedError(f"SegGAN training supports the tensorflow and jax backends, not {backend}")

    def test_step(self, *args):
        backend = keras.backend.backend()
        if backend == "tensorflow":
            return self._tf_test_step(*args)
        if backend == "jax":
            return self._jax_test_step(*args)
        raise NotImplementedError(
            f"SegGAN evaluation supports the tensorflow and jax backends, not {backend}"
        )

    # ------------------------------------------------------ backend-neutral parts
    @staticmethod
    def _unpack(data):
        image, mask, weight = keras.utils.unpack_x_y_sample_weight(data)
        if mask is None:
            raise ValueError("SegGAN batches must be (image, mask) or (image, mask, fov_weight)")
        return image, mask, weight

    def _pairs(self, image, mask, pred, weight):
        """Real and fake pairs stacked on the batch axis, masks limited to the FOV."""
        mask = ops.cast(mask, pred.dtype)
        if len(mask.shape) == len(pred.shape) - 1:
            mask = ops.expand_dims(mask, -1)
        if weight is not None:
            fov = pixel_weights(weight, pred)
            mask, pred = mask * fov, pred * fov
        image = ops.cast(image, pred.dtype)
        real = ops.concatenate([image, mask], axis=-1)
        fake = ops.concatenate([image, pred], axis=-1)
        return ops.concatenate([real, fake], axis=0)

    def _gan_losses(self, mask, pred, logits, weight) -> dict:
        real_logits, fake_logits = ops.split(logits, 2, axis=0)
        seg_loss = self.seg_loss_fn(mask, pred, sample_weight=weight)
        adv_loss = _bce_logits(1.0, fake_logits)
        d_loss = 0.5 * (_bce_logits(1.0, real_logits) + _bce_logits(0.0, fake_logits))
        g_loss = seg_loss + self.adversarial_weight * adv_loss
        return {"g_loss": g_loss, "d_loss": d_loss, "seg_loss": seg_loss, "adv_loss": adv_loss}

    def _update_train_metrics(self, losses, mask, pred, weight) -> dict:
        self.g_loss_tracker.update_state(losses["g_loss"])
        self.d_loss_tracker.update_state(losses["d_loss"])
        self.seg_loss_tracker.update_state(losses["seg_loss"])
        self.adv_loss_tracker.update_state(losses["adv_loss"])
        self.dice_metric.update_state(mask, pred, sample_weight=weight)
        self.iou_metric.update_state(mask, pred, sample_weight=weight)
        return {metric.name: metric.result() for metric in self.metrics}

    def _update_test_metrics(self, mask, pred, weight) -> dict:
        self.seg_loss_tracker.update_state(self.seg_loss_fn(mask, pred, sample_weight=weight))
        self.dice_metric.update_state(mask, pred, sample_weight=weight)
        self.iou_metric.update_state(mask, pred, sample_weight=weight)
        return {
            metric.name: metric.result()
            for metric in (self.seg_loss_tracker, self.dice_metric, self.iou_metric)
        }

    def _check_compiled(self) -> None:
        if self.g_optimizer is None or self.d_optimizer is None:
            raise ConfigError("compile the SegGAN with its two optimizers before training")

    # --------------------------------------------------------------- TensorFlow
    def _tf_train_step(self, data):
        import tensorflow as tf

        self._check_compiled()
        image, mask, weight = self._unpack(data)
        with tf.GradientTape(persistent=True) as tape:
            pred = self.generator(image, training=True)
            logits = self.discriminator(self._pairs(image, mask, pred, weight), training=True)
            losses = self._gan_losses(mask, pred, logits, weight)
        g_variables = self.generator.trainable_variables
        d_variables = self.discriminator.trainable_variables
        g_grads = tape.gradient(losses["g_loss"], g_variables)
        d_grads = tape.gradient(losses["d_loss"], d_variables)
        del tape
        self.g_optimizer.apply(g_grads, g_variables)
        self.d_optimizer.apply(d_grads, d_variables)
        return self._update_train_metrics(losses, mask, pred, weight)

    def _tf_test_step(self, data):
        image, mask, weight = self._unpack(data)
        pred = self.generator(image, training=False)
        return self._update_test_metrics(mask, pred, weight)

    # ---------------------------------------------------------------------- JAX
    @staticmethod
    def _positions(variables, model_variables) -> list[int]:
        index = {id(variable): i for i, variable in enumerate(model_variables)}
        return [index[id(variable)] for variable in variables]

    def _stateless_metrics(self, metrics_variables, update):
        """Run ``update()`` on the metrics with their values taken from the JAX state."""
        mapping = list(zip(self.metrics_variables, metrics_variables, strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = update()
        new_values = []
        for variable, old in mapping:
            value = scope.get_current_value(variable)
            new_values.append(old if value is None else value)
        return logs, new_values

    def _jax_train_step(self, state, data):
        import jax

        self._check_compiled()
        trainable, non_trainable, optimizer_variables, metrics_variables = state
        image, mask, weight = self._unpack(data)

        g_train = self._positions(self.generator.trainable_variables, self.trainable_variables)
        d_train = self._positions(self.discriminator.trainable_variables, self.trainable_variables)
        g_fixed = self._positions(self.generator.non_trainable_variables, self.non_trainable_variables)
        d_fixed = self._positions(self.discriminator.non_trainable_variables, self.non_trainable_variables)
        n_g_opt = len(self.g_optimizer.variables)
        g_opt, d_opt = optimizer_variables[:n_g_opt], optimizer_variables[n_g_opt:]

        def forward(g_values, d_values):
            pred, g_fixed_values = self.generator.stateless_call(
                g_values, [non_trainable[i] for i in g_fixed], image, training=True
            )
            logits, d_fixed_values = self.discriminator.stateless_call(
                d_values,
                [non_trainable[i] for i in d_fixed],
                self._pairs(image, mask, pred, weight),
                training=True,
            )
            losses = self._gan_losses(mask, pred, logits, weight)
            return (losses["g_loss"], losses["d_loss"]), (losses, pred, g_fixed_values, d_fixed_values)

        g_values = [trainable[i] for i in g_train]
        d_values = [trainable[i] for i in d_train]
        # One forward pass, two backward passes: dG_loss/dG and dD_loss/dD.
        (g_loss, d_loss), pullback, aux = jax.vjp(forward, g_values, d_values, has_aux=True)
        losses, pred, g_fixed_values, d_fixed_values = aux
        g_grads, _ = pullback((ops.ones_like(g_loss), ops.zeros_like(d_loss)))
        _, d_grads = pullback((ops.zeros_like(g_loss), ops.ones_like(d_loss)))
        g_values, g_opt = self.g_optimizer.stateless_apply(g_opt, g_grads, g_values)
        d_values, d_opt = self.d_optimizer.stateless_apply(d_opt, d_grads, d_values)

        trainable = list(trainable)
        for positions, values in ((g_train, g_values), (d_train, d_values)):
            for position, value in zip(positions, values, strict=True):
                trainable[position] = value
        non_trainable = list(non_trainable)
        for positions, values in ((g_fixed, g_fixed_values), (d_fixed, d_fixed_values)):
            for position, value in zip(positions, values, strict=True):
                non_trainable[position] = value

        logs, metrics_variables = self._stateless_metrics(
            metrics_variables, lambda: self._update_train_metrics(losses, mask, pred, weight)
        )
        return logs, (trainable, non_trainable, [*g_opt, *d_opt], metrics_variables)

    def _jax_test_step(self, state, data):
        trainable, non_trainable, metrics_variables = state
        image, mask, weight = self._unpack(data)
        pred, _ = self.stateless_call(trainable, non_trainable, image, training=False)
        logs, metrics_variables = self._stateless_metrics(
            metrics_variables, lambda: self._update_test_metrics(mask, pred, weight)
        )
        return logs, (trainable, non_trainable, metrics_variables)

    # ---------------------------------------------------------------- saving
    def get_config(self) -> dict:
        return {
            "name": self.name,
            "trainable": self.trainable,
            "generator": keras.saving.serialize_keras_object(self.generator),
            "discriminator": keras.saving.serialize_keras_object(self.discriminator),
            "seg_loss": keras.saving.serialize_keras_object(self.seg_loss_fn),
            "adversarial_weight": self.adversarial_weight,
        }

    @classmethod
    def from_config(cls, config: dict) -> SegGAN:
        config = dict(config)
        generator = keras.saving.deserialize_keras_object(config.pop("generator"))
        discriminator = keras.saving.deserialize_keras_object(config.pop("discriminator"))
        return cls(generator, discriminator, **config)

    def get_compile_config(self) -> dict | None:
        if self.g_optimizer is None or self.d_optimizer is None:
            return None
        return {
            "g_optimizer": keras.saving.serialize_keras_object(self.g_optimizer),
            "d_optimizer": keras.saving.serialize_keras_object(self.d_optimizer),
            "steps_per_execution": self.steps_per_execution,
        }

    def compile_from_config(self, config: dict) -> None:
        self.compile(
            g_optimizer=keras.saving.deserialize_keras_object(config["g_optimizer"]),
            d_optimizer=keras.saving.deserialize_keras_object(config["d_optimizer"]),
            steps_per_execution=config.get("steps_per_execution", 1),
        )
