import sys

import pytest

from cluster.config import ConfigError, load_config


def test_defaults_work_without_a_file():
    cfg = load_config(None)
    assert cfg.storage.uri == "./store" and cfg.model.engine == "auto" and cfg.srs.sources == ["id", "llmesr"]


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


@pytest.mark.parametrize("key, value, problem", [
    ("serve.poll_seconds", float("inf"), "finite number"),   # the poller thread died with OverflowError
    ("serve.poll_seconds", float("nan"), "finite number"),
    ("serve.poll_seconds", 0, "greater than 0"),
    ("serve.poll_seconds", -1.5, "greater than 0"),
    ("serve.token", "", "set a non-empty token or remove"),   # used to turn authentication off silently
    ("serve.token", "  ", "set a non-empty token or remove"),
    ("storage.uri", "s3:/bucket/x", "'s3:/bucket/x': use a local path"),   # used to write to a folder named s3:
    ("storage.uri", "gs://bucket/x", "or s3://bucket[/prefix]"),
    ("storage.uri", "s3://", "unsupported storage URI"),
    ("storage.uri", "", "unsupported storage URI"),
])
def test_edge_values_are_refused_at_load(key, value, problem):
    with pytest.raises(ConfigError) as err:
        load_config(None, {key: value})
    assert key in str(err.value) and problem in str(err.value)


def test_finetune_batch_is_split_across_its_workers():
    with pytest.raises(ConfigError) as err:
        load_config(None, {"finetune.num_workers": 2, "finetune.batch_size": 3})
    assert "finetune" in str(err.value) and "batch_size >= 4" in str(err.value)
    assert load_config(None, {"finetune.num_workers": 2, "finetune.batch_size": 4}).finetune.batch_size == 4


@pytest.mark.parametrize("uri", ["./store", "/data/store", "store", "./a:b", "file:///data/store", "s3://bucket",
                                 "s3://bucket/prefix"])
def test_accepted_storage_uris(uri):
    assert load_config(None, {"storage.uri": uri}).storage.uri == uri


def test_store_refuses_what_the_config_refuses():
    from cluster.storage import StorageError, Store

    with pytest.raises(StorageError, match="unsupported storage URI 's3:/bucket'"):
        Store("s3:/bucket")


def test_duplicate_yaml_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("embed:\n  batch_size: 8\n  actors: 1\n  batch_size: 16\n")
    with pytest.raises(ConfigError, match="found duplicate key 'batch_size'"):
        load_config(path)
    path.write_text("embed:\n  batch_size: 8\nembed:\n  actors: 1\n")
    with pytest.raises(ConfigError, match="found duplicate key 'embed'"):
        load_config(path)


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


def test_ctrl_c_in_any_job_exits_130_with_one_line(monkeypatch, capsys):
    """typer turns a KeyboardInterrupt into a *returned* 130 without standalone mode: the job exited 0."""
    import typer

    from jobs.runner import run

    app = typer.Typer()

    @app.command()
    def job() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["job"])
    with pytest.raises(SystemExit) as exit_:
        run(app)
    err = capsys.readouterr().err
    assert exit_.value.code == 130 and err.count("\n") == 1 and err.startswith("interrupted: ")
