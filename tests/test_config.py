import pytest

from observer.config import ConfigError, Settings, load_settings


def test_defaults_work_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.simulator.block_size == 16


def test_yaml_then_environment_override(tmp_path):
    path = tmp_path / "observer.yaml"
    path.write_text("simulator:\n  num_gpu_blocks: 100\n  model: a\nslo:\n  ttft_target_s: 5.0\n")
    settings = load_settings(path, environ={"OBSERVER_SIMULATOR__NUM_GPU_BLOCKS": "512"})
    assert settings.simulator.num_gpu_blocks == 512  # environment wins over the file
    assert settings.simulator.model == "a"
    assert settings.slo.ttft_target_s == 5.0


def test_config_path_from_environment(tmp_path):
    path = tmp_path / "elsewhere.yaml"
    path.write_text("simulator: {block_size: 32}\n")
    assert load_settings(environ={"OBSERVER_CONFIG": str(path)}).simulator.block_size == 32


def test_env_lists_parse_as_yaml():
    settings = load_settings(environ={"OBSERVER_ENGINE_EXPORTER__ALLOWED_TARGETS": "[10.1.0.0/16, vllm-0]"})
    assert settings.engine_exporter.allowed_targets == ["10.1.0.0/16", "vllm-0"]


def test_error_names_key_and_value(tmp_path):
    path = tmp_path / "observer.yaml"
    path.write_text("simulator:\n  num_gpu_blocks: lots\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert "simulator.num_gpu_blocks = 'lots'" in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_key_is_an_error_not_a_silent_default(tmp_path):
    path = tmp_path / "observer.yaml"
    path.write_text("slo:\n  kv_cache_warn: 0.5\n")
    with pytest.raises(ConfigError, match=r"slo\.kv_cache_warn: unknown key"):
        load_settings(path, environ={})


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="kv_cache_warning_ratio must be below"):
        load_settings(environ={"OBSERVER_SLO__KV_CACHE_WARNING_RATIO": "0.99"})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml", environ={})
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulator: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad, environ={})


def test_cli_override_is_validated():
    with pytest.raises(ConfigError, match=r"simulator\.block_size = 0"):
        Settings().with_overrides("simulator", block_size=0)
    assert Settings().with_overrides("simulator", block_size=32, model=None).simulator.block_size == 32


def test_ttft_target_must_be_a_bucket_bound():
    with pytest.raises(ConfigError, match="TTFT bucket bound"):
        load_settings(environ={"OBSERVER_SLO__TTFT_TARGET_S": "2.4"})
