"""Loading a configuration: presets, YAML files, ``key=value`` overrides, ``${VAR}`` expansion, old spellings.

:func:`load_config` returns the validated config dataclass of the tree's task.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from medlens.pipelines.config.schema import RunConfig, SegRunConfig, data_root
from medlens.pipelines.config.validation import VALIDATORS
from medlens.pipelines.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["load_config", "list_presets", "build_and_validate"]


def list_presets() -> list[str]:
    """Names of the presets shipped inside the package."""
    folder = resources.files("medlens.pipelines") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_preset(name: str) -> dict[str, Any]:
    folder = resources.files("medlens.pipelines") / "presets"
    entry = folder / f"{name}.yaml"
    if not entry.is_file():
        raise ConfigError(
            f"unknown preset {name!r}; known presets: {', '.join(list_presets())}"
        )
    return yaml.safe_load(entry.read_text()) or {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(loaded).__name__}")
    return loaded


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(tree: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        if "${MEDLENS_DATA}" in value:
            value = value.replace("${MEDLENS_DATA}", str(data_root()))
        return os.path.expandvars(value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _coerce(value: Any, hint: Any, key: str, default: Any = None) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping")
        return _build(hint, value, key, default)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        (item,) = get_args(hint) or (Any,)
        return [_coerce(v, item, key) for v in value]
    if origin is Union:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}") from None
        if hint is int:
            if number != int(number):
                raise ConfigError(f"config key {key!r} must be a whole number, got {value!r}")
            return int(number)
        return number
    if hint is str:
        return "" if value is None else str(value)
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "", default: Any = None) -> Any:
    """``cls`` from ``values``; missing keys come from ``default`` (the parent's default for this
    section, e.g. a segmentation run's training defaults), else from ``cls()``."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'; valid keys here: {', '.join(sorted(names))}"
        )
    default = default if default is not None else cls()
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, getattr(default, name))
    for f in dataclasses.fields(cls):
        if f.name not in kwargs:
            kwargs[f.name] = getattr(default, f.name)
    return cls(**kwargs)




def load_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig | SegRunConfig:
    """Build a validated :class:`RunConfig`, or :class:`SegRunConfig` for ``task: segmentation``.

    Args:
        source: a preset name, a YAML file path, a dict, or None for defaults.
            A YAML file may name ``preset: NAME`` to start from a preset.
        overrides: ``key.sub=value`` strings; values are parsed as YAML.

    Raises:
        ConfigError: unknown preset, unreadable file, unknown key, bad value.

    Example:
        >>> cfg = load_config("breast-ultrasound", ["train.phase1.epochs=1"])
        >>> cfg.train.phase1.epochs
        1
    """
    tree: dict[str, Any]
    if source is None:
        tree = {}
    elif isinstance(source, dict):
        tree = dict(source)
    else:
        path = Path(source)
        if path.suffix in (".yaml", ".yml") or path.exists():
            tree = _read_yaml(path)
        else:
            tree = _read_preset(str(source))
    if "preset" in tree:
        tree = _deep_merge(_read_preset(str(tree.pop("preset"))), tree)
    for override in overrides or []:
        _apply_override(tree, override)
    _migrate_spellings(tree)
    from medlens.pipelines.tasks import DEFAULT_TASK, task_named

    return task_named(tree.get("task", DEFAULT_TASK)).build_config(tree)


# Old spellings that keep working, each with a one-line notice naming the key that replaces it.
_RENAMED_DATA_KEYS = {"path_column": "image", "label_column": "label", "patient_column": "patient_id",
                      "split_column": "split"}
_RENAMED_VALUES = {("data", "kind", "folders"): "folder"}
# Keys renamed so that every task spells one thing one way (a segmentation encoder is a backbone).
_RENAMED_KEYS = {("model", "encoder"): "backbone", ("model", "encoder_weights"): "weights"}


def _migrate_spellings(tree: dict[str, Any]) -> None:
    """Rewrite deprecated keys and values of a config tree in place, with a notice for each."""
    for (section, old), new in _RENAMED_KEYS.items():
        node = tree.get(section)
        if isinstance(node, dict) and old in node:
            value = node.pop(old)
            node.setdefault(new, value)
            log.warning("config key '%s.%s' is deprecated; use '%s.%s' (set to %r)", section, old, section, new, value)
    data = tree.get("data")
    if not isinstance(data, dict):
        return
    for old, role in _RENAMED_DATA_KEYS.items():
        if old in data:
            value = data.pop(old)
            columns = data.setdefault("columns", {}) or {}
            data["columns"] = columns
            columns.setdefault(role, value)
            log.warning("config key 'data.%s' is deprecated; use 'data.columns.%s' (set to %r)", old, role, value)
    for (section, key, old), new in _RENAMED_VALUES.items():
        node = tree.get(section)
        if isinstance(node, dict) and node.get(key) == old:
            node[key] = new
            log.warning("config value %s.%s: %s is deprecated; use %s", section, key, old, new)


def build_and_validate(cls: type, tree: dict[str, Any]) -> Any:
    """``cls`` (a task's config dataclass) from a config tree, ``${VAR}`` expanded and validated."""
    cfg = _build(cls, _expand(tree))
    VALIDATORS[cls](cfg)
    return cfg


