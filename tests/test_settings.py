"""Settings: presets, precedence, and one-line errors for bad files, keys and values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ddpmkit.errors import DdpmkitError
from ddpmkit.settings import available_presets, build_settings

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_presets_exist_and_resolve():
    assert {"celeba64", "celeba128", "demo"} <= set(available_presets())
    s = build_settings(preset="celeba64")
    assert (s.model.ch, s.model.ch_mult, s.model.num_res_blocks) == (128, (1, 2, 2, 2, 4), 2)
    assert s.model.attn_resolutions == (16,) and s.model.dropout == 0.1
    assert (s.train.lr, s.train.batch_size, s.train.grad_clip, s.train.ema_decay) == (2e-4, 128, 1.0, 0.9999)
    assert (s.diffusion.beta_start, s.diffusion.beta_end, s.diffusion.timesteps) == (1e-4, 0.02, 1000)
    assert s.data.hflip


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads_and_builds_on_a_preset(path):
    """examples/ holds what a user edits: a preset named, a few annotated changes on top."""
    raw = yaml.safe_load(path.read_text())
    assert raw.get("preset") in available_presets(), "an example starts from a preset by name"
    assert "model" not in raw, "an example changes a preset, it does not copy its model"
    s = build_settings(config=path)
    s.check_model()
    assert s != build_settings(preset=raw["preset"])
    assert s.train.run_dir != build_settings(preset=raw["preset"]).train.run_dir  # never mixes into the preset's run


def test_examples_exist():
    assert len(list(EXAMPLES.glob("*.yaml"))) >= 3


def test_precedence_preset_file_set_option(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"lr": 0.5, "batch_size": 8, "seed": 3}}))
    s = build_settings(config=cfg, sets=["train.batch_size=16", "train.seed=4"], overrides={"train": {"seed": 5}})
    assert s.train.lr == 0.5  # file over preset
    assert s.train.batch_size == 16  # --set over file
    assert s.train.seed == 5  # option over --set
    assert s.model.ch == 16  # the demo preset underneath


def _error(**kwargs) -> str:
    with pytest.raises(DdpmkitError) as e:
        build_settings(**kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_config_file(tmp_path):
    assert str(tmp_path / "nope.yaml") in _error(config=tmp_path / "nope.yaml")


def test_unknown_key_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  learning_rate: 0.1\n")
    msg = _error(config=cfg)
    assert "train.learning_rate" in msg and "unknown key" in msg


def test_wrong_type_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  batch_size: lots\n")
    msg = _error(config=cfg)
    assert "train.batch_size" in msg and "lots" in msg


def test_out_of_range_value_is_named():
    msg = _error(sets=["model.dropout=1.5"])
    assert "model.dropout" in msg and "1.5" in msg


def test_unknown_preset_lists_the_choices():
    msg = _error(preset="celeba256")
    assert "celeba256" in msg and "celeba64" in msg


def test_invalid_yaml_and_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert "not valid YAML" in _error(config=bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    assert "mapping" in _error(config=lst)


def test_one_image_size_taken_from_the_data():
    assert build_settings(preset="demo", sets=["data.size=16"]).model.image_size == 16
    assert "data.size" in _error(preset="demo", sets=["model.image_size=64"])
    # attention placed at a side that the new size has no level for is an error, not silently dropped
    with pytest.raises(DdpmkitError) as e:
        build_settings(preset="demo", sets=["data.size=64"]).check_model()
    assert "model.attn_resolutions" in str(e.value) and "8" in str(e.value)


def test_bad_set_syntax():
    assert "key=value" in _error(sets=["train.lr"])
    assert "section.name" in _error(sets=["lr=0.1"])
