"""medlens.models: Keras 3 backbones and classifiers.

Import the submodules directly; this package imports nothing heavy itself:

* ``medlens.models.backbones``: ``BACKBONES``, ``build_backbone``, ``preprocess_function``,
  ``backbone_blocks``, ``import_weights``, ``keras_cache_dir``.
* ``medlens.models.classifier``: ``build_classifier``, ``get_backbone``, ``freeze_backbone``,
  ``unfreeze_top_blocks``.
"""
