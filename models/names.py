"""The names the model builders accept, in one light module (no Keras): config validation reads them.

Each builder checks its argument against the same tuple, so a name added here and to its
builder is accepted by ``load_config`` without a second copy of the list.
"""

from __future__ import annotations

__all__ = ["LOSSES", "ENCODER_NAMES", "UPSAMPLING", "HEAD_NORMS", "POOLINGS", "SEG_ARCHITECTURES"]

#: Segmentation losses (:func:`medlens.models.losses.get_loss`).
LOSSES: tuple[str, ...] = ("bce", "dice", "bce_dice", "focal", "tversky")
#: U-Net encoders (:data:`medlens.models.unet.ENCODERS`), ``none`` for the plain U-Net.
ENCODER_NAMES: tuple[str, ...] = ("none", "vgg16", "resnet50")
#: U-Net decoder upsampling.
UPSAMPLING: tuple[str, ...] = ("transpose", "bilinear")
#: Normalisation of a classifier's pooled features (:func:`medlens.models.classifier.build_classifier`).
HEAD_NORMS: tuple[str, ...] = ("batchnorm", "none")
#: Global pooling of a classifier's backbone.
POOLINGS: tuple[str, ...] = ("avg", "max")
#: Segmentation models: a U-Net trained on its loss, or a U-Net generator trained as a GAN.
SEG_ARCHITECTURES: tuple[str, ...] = ("unet", "gan")
