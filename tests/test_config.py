import sys

import pytest

from cluster.config import ConfigError, load_config


def test_defaults_work_without_a_file():
    cfg = load_config(None)
    assert cfg.storage.uri == "./store" and cfg.model.engine == "auto" and cfg.srs.sources == ["id", "llmemb"]


def test_repository_config_is_valid():
    from tests.conftest import REPO

    cfg = load_config(REPO / "ray_config.yaml")
    assert cfg.embed.actors >= 1


@pytest.mark.parametrize("text, key, problem", [
    ("embed:\n  batch_size: 0\n", "embed.batch_size", "greater than or equal to 1"),
    ("model:\n  engine: tpu\n", "model.engine", "'auto', 'hf' or 'vllm'"),
    ("srs:\n  sources: []\n", "srs.sources", "at least one"),
    ("index:\n  factory: Flat\n  bogus: 1\n", "index.bogus", "Extra inputs are not permitted"),
])
def test_invalid_values_name_the_key(tmp_path, text, key, problem):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert key in str(err.value) and problem in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("ray: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_overrides_are_validated_too():
    assert load_config(None, {"dataset.name": "ml-100k"}).dataset.name == "ml-100k"
    with pytest.raises(ConfigError, match="embed.actors"):
        load_config(None, {"embed.actors": -1})


@pytest.mark.parametrize("argv, message", [
    (["guidedrec", "index", "--bogus"], "No such option: --bogus"),
    (["guidedrec", "finetune", "--out", "x"], "Missing option '--objective'"),
    (["guidedrec", "index", "--config", "/nonexistent.yaml"], "error: config file not found: /nonexistent.yaml"),
])
def test_cli_usage_and_config_errors_are_one_line_exit_2(monkeypatch, capsys, argv, message):
    from jobs import cli

    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and "Traceback" not in err
