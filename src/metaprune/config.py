"""Experiment configs: YAML files in ``configs/`` with ``--set a.b=value`` overrides.

A config has five sections: ``data``, ``model``, ``learner``, ``train``, ``eval``. Anything
missing takes the default below, so a config file only states what differs.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "data": {
        "dataset": "glyphs",     # see metaprune.data.registry
        "root": None,            # data root; None -> $METAPRUNE_DATA (not needed for glyphs)
        "options": {},           # dataset options (image_size, rotations, ...)
        "train_split": "train",
        "test_split": "test",
        "n_way": 5, "k_shot": 1, "q_query": 15,
    },
    "model": {"name": "conv4", "kwargs": {"width": 64}},
    "learner": {"name": "maml", "inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3,
                "meta_lr": 1e-3},
    "train": {"iterations": 1000, "meta_batch": 16, "checkpoint_every": 100, "seed": 0},
    "eval": {"tasks": 600, "seed": 12345, "q_query": 15},
}
SECTIONS = tuple(DEFAULTS)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names it."""


def _merge(base: dict, override: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("options", "kwargs"):
            out[k] = _merge(out[k], v, f"{where}.{k}")
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None
                ) -> dict:
    """Defaults <- config file <- ``key.path=value`` overrides (values parsed as YAML)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except FileNotFoundError as e:
            raise ConfigError(f"config file '{p}' does not exist") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from e
        if not isinstance(doc, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping, not {type(doc).__name__}")
        unknown = set(doc) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"config file '{p}': unknown section(s) {sorted(unknown)}; "
                              f"valid: {list(SECTIONS)}")
        cfg = _merge(cfg, doc, str(p))
    for item in overrides or []:
        set_key(cfg, item)
    return cfg


def parse_key_value(text: str, what: str = "option") -> tuple[str, object]:
    """``KEY=VALUE`` -> (KEY, VALUE as int, float, bool or str); ``what`` names the flag in
    the error."""
    key, sep, val = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{what} '{text}': expected KEY=VALUE")
    for conv in (int, float):
        try:
            return key, conv(val)
        except ValueError:
            pass
    return key, {"true": True, "false": False}.get(val.lower(), val)


def set_key(cfg: dict, item: str) -> None:
    """Apply one ``a.b.c=value`` override in place."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if parts[0] not in SECTIONS:
        raise ConfigError(f"override '{item}': unknown section '{parts[0]}'; "
                          f"valid: {list(SECTIONS)}")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': cannot parse value: {e}") from e
