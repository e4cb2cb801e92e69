"""Configuration: presets, YAML files, overrides and one-line errors."""

from __future__ import annotations

import pytest

from medlens.pipelines.config import config_to_dict, data_root, list_presets, load_config
from medlens.pipelines.errors import ConfigError


def test_presets_ship_inside_the_package():
    assert {"xray-pneumonia", "breast-ultrasound", "fundus-retinopathy"} <= set(list_presets())


@pytest.mark.parametrize("name", ["xray-pneumonia", "breast-ultrasound", "fundus-retinopathy",
                                  "xray-pneumonia-224", "brain-mri-tumour"])
def test_every_preset_loads_and_points_at_shared_data(name, shared_data, monkeypatch):
    monkeypatch.setenv("MEDLENS_DATA", str(shared_data))
    cfg = load_config(name)
    source = cfg.data.npz or cfg.data.root
    assert source.startswith(str(shared_data))
    from pathlib import Path

    assert Path(source).exists(), source


def test_medlens_data_variable_moves_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLENS_DATA", str(tmp_path))
    assert data_root() == tmp_path.resolve()
    assert load_config("breast-ultrasound").data.npz == str(tmp_path.resolve() / "medmnist" / "breastmnist.npz")


def test_overrides_are_typed():
    cfg = load_config("breast-ultrasound", ["train.phase1.epochs=3", "data.image_size=[32, 40]",
                                            "model.weights=none", "data.class_weights=false"])
    assert cfg.train.phase1.epochs == 3 and isinstance(cfg.train.phase1.epochs, int)
    assert cfg.data.image_size == [32, 40]
    assert cfg.model.weights == "none"
    assert cfg.data.class_weights is False


def test_yaml_file_can_start_from_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: fundus-retinopathy\nname: mine\ntrain:\n  phase2:\n    epochs: 0\n")
    cfg = load_config(path)
    assert cfg.name == "mine"
    assert cfg.data.augment == "fundus"
    assert cfg.train.phase2.epochs == 0
    assert config_to_dict(cfg)["model"]["backbone"] == "resnet50"


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["train.phase9.epochs=1"], "unknown config key 'train.phase9'"),
        (["data.kind=zip"], "data.kind"),
        (["train.phase1.epochs=two"], "must be a number"),
        (["data.class_weights=maybe"], "true or false"),
        (["data.image_size=[4, 4]"], "image_size"),
        (["epochs"], "key.sub=value"),
    ],
)
def test_bad_values_raise_one_line_config_errors(overrides, fragment):
    with pytest.raises(ConfigError) as info:
        load_config("breast-ultrasound", overrides)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_preset_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(listing)


def test_config_validation_reads_allowed_values_from_the_registries_and_every_name_is_built():
    import numpy as np

    from medlens.models import names as model_names
    from medlens.models.losses import get_loss
    from medlens.models.unet import ENCODERS
    from medlens.pipelines import names
    from medlens.pipelines.augment import build_augmentation
    from medlens.pipelines.config import validation as config
    from medlens.pipelines.evaluation.classification import choose_threshold

    assert config._SEG_CHOICES["model.loss"] is model_names.LOSSES
    assert config._CHOICES["data.augment"] is config._SEG_CHOICES["data.augment"] is names.AUGMENT_PRESETS
    assert config._CHOICES["evaluate.threshold"] is names.THRESHOLD_METHODS
    assert all(get_loss(name) is not None for name in model_names.LOSSES)
    assert set(ENCODERS) | {"none"} == set(model_names.ENCODER_NAMES)
    assert all(preset == "none" or build_augmentation(preset) is not None for preset in names.AUGMENT_PRESETS)
    truth, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert all(0 < choose_threshold(truth, scores, method) < 1 for method in names.THRESHOLD_METHODS)
    with pytest.raises(ConfigError, match="choose one of adam, sgd, adamw"):
        load_config({"train": {"optimizer": "rmsprop"}})


def test_a_segmentation_encoder_is_spelled_backbone_and_weights_as_for_classifiers(caplog):
    import logging

    seg = {"task": "segmentation", "data": {"kind": "drive", "root": "x", "patch_size": 64}}
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.config"):
        old = load_config({**seg, "model": {"encoder": "vgg16", "encoder_weights": "none"}})
    assert [r.getMessage() for r in caplog.records] == [
        "config key 'model.encoder' is deprecated; use 'model.backbone' (set to 'vgg16')",
        "config key 'model.encoder_weights' is deprecated; use 'model.weights' (set to 'none')"]
    caplog.clear()
    new = load_config({**seg, "model": {"backbone": "vgg16", "weights": "none"}})
    assert old.model == new.model and new.model.backbone == "vgg16" and new.model.multiple() == 16
    assert caplog.records == []
    old_override = load_config(seg, ["model.encoder=resnet50"])  # the old key on the command line too
    assert old_override.model.backbone == "resnet50"
    with pytest.raises(ConfigError, match="'model.backbone' is 'densenet'; choose one of none, vgg16, resnet50"):
        load_config({**seg, "model": {"backbone": "densenet"}})
    classifier = load_config({"model": {"backbone": "resnet50", "weights": "none"}})  # the same two keys
    assert (classifier.model.backbone, classifier.model.weights) == ("resnet50", "none")
