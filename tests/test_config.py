"""Config files and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaprune.config import ConfigError, load_config, parse_key_value, parse_value

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_overrides_and_defaults(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  dataset: omniglot\n  n_way: 20\n  options: {rotations: true}\n"
                 "learner:\n  name: anil\n")
    cfg = load_config(f, ["train.iterations=7", "learner.inner_lr=0.1",
                          "data.options.image_size=42"])
    assert cfg["data"]["n_way"] == 20 and cfg["data"]["k_shot"] == 1  # default kept
    assert cfg["data"]["options"] == {"rotations": True, "image_size": 42}
    assert cfg["learner"]["name"] == "anil" and cfg["learner"]["inner_lr"] == 0.1
    assert cfg["train"]["iterations"] == 7


def test_bad_configs_are_named(tmp_path) -> None:
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    f = tmp_path / "bad.yaml"
    f.write_text("trian:\n  iterations: 3\n")
    with pytest.raises(ConfigError, match="bad.yaml.*trian"):
        load_config(f)
    with pytest.raises(ConfigError, match="noequals"):
        load_config(None, ["noequals"])
    with pytest.raises(ConfigError, match="'model2'"):
        load_config(None, ["model2.x=1"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg["data"]["n_way"] >= 2 and cfg["train"]["iterations"] > 0
    from metaprune.learners import LEARNERS
    from metaprune.models import MODELS

    assert cfg["learner"]["name"] in LEARNERS and cfg["model"]["name"] in MODELS


def test_key_value_options_are_typed_and_bad_ones_named() -> None:
    assert parse_key_value("image_size=42") == ("image_size", 42)
    assert parse_key_value("damping=1e-4") == ("damping", 1e-4)
    assert parse_key_value("rotations=True") == ("rotations", True)
    assert parse_key_value("include_last=false") == ("include_last", False)
    assert parse_key_value("h_data=support") == ("h_data", "support")
    assert parse_key_value("path=a=b") == ("path", "a=b")  # only the first '=' splits
    for bad in ("damping", "=3"):
        with pytest.raises(ValueError, match=f"--pruning '{bad}': expected KEY=VALUE"):
            parse_key_value(bad, "--pruning")


@pytest.mark.parametrize("override, message", [
    ("train.iteratons=5", "unknown key 'train.iteratons' (did you mean 'train.iterations'?"),
    ("data.nway=5", "did you mean 'data.n_way'?"),
    ("eval.taks=3", "did you mean 'eval.tasks'?"),
    ("learner.inner_lrr=0.1", "did you mean 'learner.inner_lr'?"),
    ("model.nam=conv4", "did you mean 'model.name'?"),
    ("data.dataset=omniglott", "unknown dataset 'omniglott' (did you mean 'omniglot'?"),
    ("data.options.imagesize=3", "unknown option 'imagesize' (did you mean 'image_size'?"),
    ("learner.name=mamll", "unknown learner 'mamll' (did you mean 'maml'?"),
    ("data.test_split=tset", "unknown test_split 'tset' (did you mean 'test'?"),
])
def test_unknown_keys_and_names_are_refused_with_the_closest_one(override, message) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert f"--set {override}" in str(e.value) and message in str(e.value)


def test_unknown_key_in_a_file_names_the_file(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  iteratons: 5\n")
    with pytest.raises(ConfigError, match=r"config file '.*c.yaml': train.iteratons: unknown key"):
        load_config(f)


@pytest.mark.parametrize("override", [
    "learner.meta_lr=0", "learner.meta_lr=-1e-3", "learner.inner_lr=-0.4",
    "learner.inner_lr=nan", "learner.meta_lr=1e400", "learner.eval_inner_steps=-1",
    "learner.inner_steps=-2", "train.checkpoint_every=0", "train.checkpoint_every=-5",
    "train.iterations=0", "train.meta_batch=0", "train.iterations=2.5", "train.meta_batch=true",
    "data.n_way=1", "data.k_shot=0", "data.q_query=0", "eval.tasks=0", "eval.q_query=0",
])
def test_out_of_range_values_are_refused_naming_the_key(override) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"--set {override}: {key}: "):
        load_config(None, [override])


def test_values_are_typed_by_one_parser() -> None:
    cfg = load_config(None, ["learner.meta_lr=1e-4", "train.iterations=3e2",
                             "learner.first_order=true"])
    assert cfg["learner"]["meta_lr"] == 1e-4 and isinstance(cfg["learner"]["meta_lr"], float)
    assert cfg["train"]["iterations"] == 300 and isinstance(cfg["train"]["iterations"], int)
    assert cfg["learner"]["first_order"] is True
    expected = {"1e-4": 1e-4, "3": 3, "0.5": 0.5, "true": True, "abc": "abc", "[1, 2]": [1, 2],
                "inf": float("inf"), "-7": -7, "{width: 32}": {"width": 32},
                "010": 10, "1:30": "1:30", "2024-01-01": "2024-01-01"}  # no YAML 1.1 surprises
    for raw, value in expected.items():
        assert parse_value(raw) == value and type(parse_value(raw)) is type(value)
        assert parse_key_value(f"k={raw}") == ("k", value)
        assert load_config(None, [f"model.kwargs.k={raw}"])["model"]["kwargs"]["k"] == value


def test_a_config_file_replaces_the_default_model_kwargs() -> None:
    import torch

    from metaprune.models import build_model

    cfg = load_config(Path(__file__).parents[1] / "configs" / "miniimagenet_5w1s_resnet12.yaml")
    assert "width" not in cfg["model"]["kwargs"]  # Conv4's default does not leak in
    with torch.device("meta"):
        build_model(cfg["model"]["name"], n_way=5, in_channels=3, image_size=84,
                    **cfg["model"]["kwargs"])


def test_a_bad_value_from_the_file_is_blamed_on_the_file_not_on_an_override(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  dataset: omniglott\n")
    with pytest.raises(ConfigError, match=r"^config file '.*c.yaml': data: unknown dataset"):
        load_config(f, ["data.n_way=5"])
