"""Config errors name the file, the field, the bad value and what is allowed."""

from __future__ import annotations

import pytest

from reasonloop.cli import main
from reasonloop.config import ConfigError, RunConfig, load_config, preset_names


def test_every_preset_validates():
    names = preset_names()
    assert {"easy-to-hard", "star", "rft", "rest-em"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.preset == name


def test_default_is_easy_to_hard_and_label_free():
    cfg = load_config()
    assert cfg.preset == "easy-to-hard-packed" and cfg.tasks.seed_pack > 0
    assert cfg.evaluator.kind == "consensus" and not cfg.strategy.rationalize
    assert not cfg.uses_gold_after_seed


def test_unknown_preset_suggests(tmp_path):
    with pytest.raises(ConfigError, match="did you mean `star`"):
        load_config("stra")


def test_bad_type_names_field_and_value(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: rft\ntrain:\n  lr: fast\n")
    with pytest.raises(ConfigError) as e:
        load_config(path=f)
    msg = str(e.value)
    assert str(f) in msg and "`train.lr`" in msg and "'fast'" in msg and "number" in msg


def test_unknown_field_is_an_error(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("reasoner:\n  sampels: 4\n")
    with pytest.raises(ConfigError, match=r"`reasoner.sampels`: unknown field"):
        load_config(path=f)


def test_out_of_range_says_what_is_allowed(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("evaluator:\n  min_vote_share: 1.5\n")
    with pytest.raises(
        ConfigError, match=r"`evaluator.min_vote_share`: got 1.5: .*less than or equal to 1"
    ):
        load_config(path=f)


def test_malformed_yaml_names_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 1\ntrain:\n  lr: [1, 2\nrounds: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml:\d+:\d+: malformed YAML"):
        load_config(path=f)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(path=tmp_path / "nope.yaml")


def test_user_file_starts_from_named_preset(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: star\nrounds: 7\n")
    cfg = load_config(path=f)
    assert cfg.rounds == 7 and cfg.strategy.rationalize and cfg.preset == "star"


def test_rope_theta_inf_allowed():
    assert RunConfig.model_validate(
        {"model": {"rope_theta": float("inf")}}
    ).model.rope_theta == float("inf")


def test_cli_exits_nonzero_with_message(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("rounds: -1\n")
    assert main(["run", "--config", str(f), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "`rounds`" in err and "greater than or equal to 0" in err
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_cli_bad_set(tmp_path, capsys):
    assert main(["run", "--set", "nonsense", "--out", str(tmp_path / "r")]) == 2
    assert "FIELD=VALUE" in capsys.readouterr().err
