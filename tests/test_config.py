"""Config files and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaprune.config import ConfigError, load_config, parse_key_value

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_overrides_and_defaults(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  n_way: 20\n  options: {rotations: true}\nlearner:\n  name: anil\n")
    cfg = load_config(f, ["train.iterations=7", "learner.inner_lr=0.1", "data.options.x=[1,2]"])
    assert cfg["data"]["n_way"] == 20 and cfg["data"]["k_shot"] == 1  # default kept
    assert cfg["data"]["options"] == {"rotations": True, "x": [1, 2]}
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
