"""Experiment configs: YAML files in ``configs/`` with ``--set a.b=value`` overrides.

A config has five sections: ``data``, ``model``, ``learner``, ``train``, ``eval``. Anything
missing takes the default of :class:`ConfigSchema`, so a config file only states what
differs. Every key is typed and range-checked by the schema (pydantic) before any work
starts; an unknown key is refused with the closest valid one suggested.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names it."""


def _unknown(what: str, value: object, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"unknown {what} '{value}' ({hint}valid: {valid})"


# ---- schema -------------------------------------------------------------------------------
def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {v}")
    return v


Count = Annotated[int, BeforeValidator(_no_bool)]
Rate = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSection(_Section):
    dataset: str = "glyphs"          # see metaprune.data.registry
    root: str | None = None          # data root; None -> $METAPRUNE_DATA (not needed for glyphs)
    options: dict[str, Any] = {}     # dataset options (image_size, rotations, ...)
    train_split: str = "train"
    test_split: str = "test"
    n_way: Annotated[Count, Field(ge=2)] = 5
    k_shot: Annotated[Count, Field(ge=1)] = 1
    q_query: Annotated[Count, Field(ge=1)] = 15

    @model_validator(mode="after")
    def _known_dataset(self) -> DataSection:
        from .data.registry import DATASETS, dataset_options

        if self.dataset not in DATASETS:
            raise ValueError(_unknown("dataset", self.dataset, DATASETS))
        valid = dataset_options(self.dataset)
        for key in self.options:
            if key not in valid:
                raise ValueError(f"dataset '{self.dataset}': " + _unknown("option", key, valid))
        splits = DATASETS[self.dataset][1]
        for key in ("train_split", "test_split"):
            split = getattr(self, key)
            if splits is not None and split not in splits:
                raise ValueError(f"dataset '{self.dataset}': " + _unknown(key, split, splits))
        return self


class ModelSection(_Section):
    name: str = "conv4"
    kwargs: dict[str, Any] = {"width": 64}

    @model_validator(mode="after")
    def _known_model(self) -> ModelSection:
        from .models import MODELS

        if self.name not in MODELS:
            raise ValueError(_unknown("model", self.name, MODELS))
        return self


class LearnerSection(_Section):
    # learner-specific keys (e.g. CAVIA's context_dim) are allowed when the learner's
    # constructor names them
    model_config = ConfigDict(extra="allow")
    name: str = "maml"
    inner_lr: Rate = 0.4
    inner_steps: Annotated[Count, Field(ge=0)] = 1
    eval_inner_steps: Annotated[Count, Field(ge=0)] | None = 3
    meta_lr: Rate = 1e-3
    first_order: bool | None = None  # None: the learner's own choice

    @model_validator(mode="after")
    def _known_learner(self) -> LearnerSection:
        from .learners import LEARNERS

        if self.name not in LEARNERS:
            raise ValueError(_unknown("learner", self.name, LEARNERS))
        own = [p for p in inspect.signature(LEARNERS[self.name]).parameters
               if p not in ("model", "kw", "kwargs", *LearnerSection.model_fields)]
        for key in self.model_extra or {}:
            if key not in own:
                valid = [f"learner.{k}" for k in dict.fromkeys([*LearnerSection.model_fields,
                                                                *own])]
                raise ValueError(f"learner '{self.name}': "
                                 + _unknown("key", f"learner.{key}", valid))
        return self


class TrainSection(_Section):
    iterations: Annotated[Count, Field(ge=1)] = 1000
    meta_batch: Annotated[Count, Field(ge=1)] = 16
    checkpoint_every: Annotated[Count, Field(ge=1)] = 100
    seed: Annotated[Count, Field(ge=0)] = 0


class EvalSection(_Section):
    tasks: Annotated[Count, Field(ge=1)] = 600
    seed: Annotated[Count, Field(ge=0)] = 12345
    q_query: Annotated[Count, Field(ge=1)] = 15


class ConfigSchema(_Section):
    """The whole config: every key typed and range-checked; unknown keys are refused."""
    data: DataSection = DataSection()
    model: ModelSection = ModelSection()
    learner: LearnerSection = LearnerSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()


SECTIONS = tuple(ConfigSchema.model_fields)


def _as_dict(schema: ConfigSchema) -> dict[str, Any]:
    cfg = schema.model_dump()
    if cfg["learner"]["first_order"] is None:  # let the learner decide (fomaml, reptile, ...)
        del cfg["learner"]["first_order"]
    return cfg


DEFAULTS: dict[str, Any] = _as_dict(ConfigSchema())


def _merge(base: dict, override: dict) -> dict:
    """Sections merge key by key; a dataset's ``options`` and a model's ``kwargs`` given by a
    file replace the defaults whole (ResNet-12's kwargs must not inherit Conv4's width)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("options", "kwargs"):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _error_message(e: ValidationError, path: Path | None, overrides: list[str]) -> str:
    lines = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc)
        # the override that set this key; for a section-level check, the one whose key or
        # value the message names
        candidates = [o for o in reversed(overrides)
                      if key and o.split("=", 1)[0].strip().startswith(key)]
        if len(loc) == 1:
            candidates = [o for o in candidates
                          if any(part.strip() and part.strip() in err["msg"]
                                 for part in (o.split("=", 1)[0].split(".")[-1],
                                              o.split("=", 1)[-1]))]
        origin = f"--set {candidates[0]}" if candidates else None
        origin = origin or (f"config file '{path}'" if path is not None else "config")
        if err["type"] == "extra_forbidden":
            section = ConfigSchema
            for part in loc[:-1]:
                section = section.model_fields[part].annotation
            msg = _unknown("key", key, [".".join([*loc[:-1], f]) for f in section.model_fields])
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] not in ("value_error",) and "input" in err:
                msg += f" (got {err['input']!r})"
        lines.append(f"{origin}: {key or 'config'}: {msg}")
    return "\n".join(lines)


def validate_config(cfg: dict, path: Path | None = None,
                    overrides: list[str] | None = None) -> dict:
    """``cfg`` typed and range-checked against :class:`ConfigSchema`, defaults filled in;
    ConfigError naming the file or override and the key otherwise."""
    try:
        return _as_dict(ConfigSchema.model_validate(cfg))
    except ValidationError as e:
        raise ConfigError(_error_message(e, path, list(overrides or []))) from None


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None
                ) -> dict:
    """Defaults <- config file <- ``key.path=value`` overrides, validated."""
    cfg = copy.deepcopy(DEFAULTS)
    p = None if path is None else Path(path)
    if p is not None:
        try:
            doc = yaml.safe_load(p.read_text()) or {}
        except (FileNotFoundError, IsADirectoryError) as e:
            raise ConfigError(f"config file '{p}' does not exist or is not a file") from e
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from e
        if not isinstance(doc, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping, not {type(doc).__name__}")
        unknown = set(doc) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"config file '{p}': "
                              + _unknown("section", sorted(unknown)[0], SECTIONS))
        cfg = _merge(cfg, doc)
    for item in overrides or []:
        set_key(cfg, item)
    in_file = doc.get("learner") if p is not None else None
    given = {*(in_file if isinstance(in_file, dict) else {}),
             *(item.partition("=")[0].strip()[len("learner."):] for item in overrides or []
               if item.startswith("learner."))}
    _learner_defaults(cfg, given)
    return validate_config(cfg, p, overrides)


def _learner_defaults(cfg: dict, given: set[str]) -> None:
    """The learner's own defaults (``Learner.defaults``, e.g. CAVIA's lr 1.0 and 2 steps) for
    the learner keys neither the config file nor an override sets."""
    from .learners import LEARNERS

    section = cfg.get("learner")
    name = section.get("name") if isinstance(section, dict) else None
    if isinstance(name, str) and name in LEARNERS:
        section.update({k: v for k, v in LEARNERS[name].defaults.items() if k not in given})


_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)


def parse_value(raw: str) -> object:
    """One command-line value: decimal numbers as int or float (``010`` is 10, ``1e-4`` a
    float; no YAML 1.1 octal, sexagesimal or dates), ``true``/``false``/``null``, YAML lists
    and mappings (``[1, 2]``, ``{width: 32}``), anything else a string."""
    text = raw.strip()
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "none", "~"):
        return None
    if text[:1] in "[{":
        value = yaml.safe_load(text)
        return value
    return raw


def parse_key_value(text: str, what: str = "option") -> tuple[str, object]:
    """``KEY=VALUE`` -> (KEY, VALUE parsed by :func:`parse_value`); ``what`` names the flag
    in the error."""
    key, sep, val = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{what} '{text}': expected KEY=VALUE")
    try:
        return key.strip(), parse_value(val)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} '{text}': cannot parse the value: {e}") from None


def set_key(cfg: dict, item: str) -> None:
    """Apply one ``a.b.c=value`` override in place (checked by :func:`validate_config`)."""
    key, value = parse_key_value(item, "--set")
    parts = key.split(".")
    if parts[0] not in SECTIONS:
        raise ConfigError(f"--set {item}: " + _unknown("section", parts[0], SECTIONS))
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every key whose value differs between two configs."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, "(unset)") != b.get(k, "(unset)")]
