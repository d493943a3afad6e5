"""Agent config: shipped device files validate; mistakes are reported as FILE:LINE: key.path: message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge_agent.config import (
    AgentConfig,
    ConfigError,
    SecretError,
    check_config_main,
    load_config,
    read_secret,
)

DEVICE_CONFIGS = sorted((Path(__file__).resolve().parents[1] / "device_configs").glob("*.yaml"))
ISSUE_RE = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): (?P<key>\S+): (?P<msg>.+)$")

MINIMAL = """\
device_id: van-07
camera:
  source: /dev/video0
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def issues(exc: pytest.ExceptionInfo[ConfigError]) -> list[dict]:
    """Parse str(ConfigError): every line must have the FILE:LINE: key.path: message shape."""
    out = []
    for line in str(exc.value).splitlines():
        m = ISSUE_RE.match(line)
        assert m, f"not FILE:LINE: key: message -> {line!r}"
        out.append({**m.groupdict(), "line": int(m["line"])})
    return out


def test_device_configs_exist():
    assert {p.stem for p in DEVICE_CONFIGS} == {"raspberry-pi-4", "raspberry-pi-5", "jetson-nano",
                                                "jetson-orin-nano", "x86-dev"}


@pytest.mark.parametrize("path", DEVICE_CONFIGS, ids=lambda p: p.stem)
def test_every_device_config_loads(path: Path):
    cfg = load_config(path, environ={})
    assert isinstance(cfg, AgentConfig)
    assert cfg.model.path is None  # the shipped reference model
    assert cfg.model.batch_size == 1
    assert cfg.http.host == "127.0.0.1"
    if path.stem.startswith("jetson"):
        assert cfg.model.onnx_providers()[0] == "TensorrtExecutionProvider"
        assert cfg.model.onnx_providers()[-1] == "CPUExecutionProvider"
        assert cfg.camera.source.startswith("jetson-csi")
    if path.stem.startswith("raspberry"):
        assert cfg.camera.source.startswith("libcamera")
    if path.stem != "x86-dev":
        assert cfg.mqtt.password_credential == "mqtt-password"
        assert str(cfg.state_dir) == "/var/lib/crackseg-edge"


def test_typo_names_key_path_line_and_suggestion(tmp_path: Path):
    path = write(tmp_path, MINIMAL + "model:\n  backend: onnx\n  thread: 2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    [issue] = issues(exc)
    assert issue["file"] == str(path) and issue["line"] == 6 and issue["key"] == "model.thread"
    assert "unknown key 'thread'" in issue["msg"] and "did you mean 'threads'" in issue["msg"]


def test_unknown_section_is_refused(tmp_path: Path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, MINIMAL + "camra:\n  fps: 3\n"), environ={})
    [issue] = issues(exc)
    assert (issue["line"], issue["key"]) == (4, "camra") and "did you mean 'camera'" in issue["msg"]


def test_every_problem_is_listed_with_its_line(tmp_path: Path):
    text = """\
device_id: van/07
model:
  threads: four
camera:
  source: /dev/video0
http:
  port: 70000
position:
  provider: {type: nmea, baud: 9600}
"""
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ={})
    found = {(i["line"], i["key"]) for i in issues(exc)}
    assert found == {(1, "device_id"), (3, "model.threads"), (7, "http.port"), (9, "position.provider.baud"),
                     (9, "position.provider.device")}
    text_out = str(exc.value)
    assert "(got 'four')" in text_out and "did you mean 'baudrate'" in text_out


def test_wrong_type_in_a_list_names_the_item(tmp_path: Path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, MINIMAL + "model:\n  providers:\n    - cpu\n    - gpu\n"), environ={})
    [issue] = issues(exc)
    assert (issue["line"], issue["key"]) == (7, "model.providers[1]")
    assert "unknown execution provider 'gpu'" in issue["msg"]


def test_missing_model_file_is_an_error_with_key_and_line(tmp_path: Path):
    path = write(tmp_path, MINIMAL + "model:\n  backend: onnx\n  path: models/crack.onnx\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    [issue] = issues(exc)
    assert (issue["line"], issue["key"]) == (6, "model.path")
    assert f"model file not found: {tmp_path / 'models' / 'crack.onnx'}" in issue["msg"]
    # relative to the config file, not the working directory
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "crack.onnx").write_bytes(b"onnx")
    assert load_config(path, environ={}).model.path == tmp_path / "models" / "crack.onnx"


def test_clear_text_password_is_refused(tmp_path: Path):
    text = MINIMAL + "mqtt:\n  url: mqtt://broker:1883\n  username: van\n  password: hunter2\n"
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, text), environ={})
    [issue] = issues(exc)
    assert (issue["line"], issue["key"]) == (7, "mqtt.password")
    assert "password_file" in issue["msg"] and "password_credential" in issue["msg"]
    assert "hunter2" not in str(exc.value)


def test_duplicate_key_and_yaml_syntax_errors_have_lines(tmp_path: Path):
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, MINIMAL + "http:\n  port: 1\n  port: 2\n"), environ={})
    [issue] = issues(exc)
    assert (issue["line"], issue["key"]) == (6, "http.port") and "first set on line 5" in issue["msg"]

    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, MINIMAL + "model:\n  providers: [cpu\nhttp: {}\n", "bad.yaml"), environ={})
    assert re.match(rf"^{re.escape(str(tmp_path / 'bad.yaml'))}:\d+: YAML syntax error: .*line 5", str(exc.value))


def test_missing_file_and_non_mapping(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", environ={})
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), environ={})


def test_crackseg_env_overrides(tmp_path: Path):
    path = write(tmp_path, MINIMAL + "model:\n  threads: 2\n")
    cfg = load_config(path, environ={
        "CRACKSEG_MODEL__THREADS": "3", "CRACKSEG_DEVICE_ID": "van-08", "CRACKSEG_MQTT__URL": "mqtts://b:8883",
        "CRACKSEG_MODEL__PROVIDERS": "[cuda, cpu]", "CRACKSEG_HTTP__ENABLED": "false",
        "CRACKSEG_MQTT__OUTBOX__MAX_BYTES": "64M", "CRACKSEG_CONFIG": str(path)})
    assert cfg.model.threads == 3 and cfg.device_id == "van-08"
    assert cfg.mqtt.url == "mqtts://b:8883" and cfg.model.providers == ["cuda", "cpu"]
    assert cfg.http.enabled is False and cfg.mqtt.outbox.max_bytes == 64 * 1024**2


@pytest.mark.parametrize("device,backend,providers", [
    ("cpu", "onnx", ["cpu"]), ("cuda", "onnx", ["cuda", "cpu"]),
    ("tensorrt", "onnx", ["tensorrt", "cuda", "cpu"]), ("TFLite", "tflite", ["cpu"])])
def test_inference_device_variable(tmp_path: Path, device: str, backend: str, providers: list[str]):
    cfg = load_config(write(tmp_path, MINIMAL), environ={"INFERENCE_DEVICE": device})
    assert (cfg.model.backend, cfg.model.providers) == (backend, providers)


def test_legacy_variables(tmp_path: Path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    cfg = load_config(write(tmp_path, MINIMAL), environ={
        "MODEL_PATH": str(model), "MODEL_VERSION": "2.1.0", "LOG_LEVEL": "debug", "BATCH_SIZE": "1",
        "MAX_WORKERS": "2", "MEMORY_LIMIT": "512M"})
    assert cfg.model.path == model and cfg.model.expected_version == "2.1.0"
    assert cfg.logging.level == "DEBUG" and cfg.model.threads == 2
    assert cfg.health.memory_limit == 512 * 1024 * 1024


def test_precedence_yaml_then_legacy_then_crackseg_then_overrides(tmp_path: Path):
    path = write(tmp_path, MINIMAL + "model:\n  threads: 1\n")
    assert load_config(path, environ={"MAX_WORKERS": "2"}).model.threads == 2
    assert load_config(path, environ={"MAX_WORKERS": "2", "CRACKSEG_MODEL__THREADS": "3"}).model.threads == 3
    cfg = load_config(path, {"model.threads": 4, "camera": {"source": "clip.mp4"}, "state_dir": None},
                      environ={"CRACKSEG_MODEL__THREADS": "3"})
    assert cfg.model.threads == 4 and cfg.camera.source == "clip.mp4"


def test_bad_variables_name_the_variable(tmp_path: Path):
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={"BATCH_SIZE": "8", "INFERENCE_DEVICE": "gpu", "CRACKSEG_MODEL__THREDS": "2",
                                   "MEMORY_LIMIT": "lots"})
    text = str(exc.value)
    assert "env INFERENCE_DEVICE: model.backend: 'gpu' is not one of cpu, cuda, tensorrt, tflite" in text
    assert "env BATCH_SIZE: model.batch_size: batch_size must be 1 on the edge" in text
    assert "env CRACKSEG_MODEL__THREDS: model.threds: unknown key 'threds'; did you mean 'threads'?" in text
    assert "env MEMORY_LIMIT: health.memory_limit: 'lots' is not a size" in text


def test_no_file_means_defaults_plus_overrides():
    cfg = load_config(None, {"camera.source": "/dev/video2"}, environ={})
    assert cfg.camera.source == "/dev/video2" and cfg.model.backend == "auto" and cfg.http.port == 8787
    with pytest.raises(ConfigError, match=r"camera: required key is missing"):
        load_config(None, environ={})


def test_check_config_main(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    for name in [n for n in __import__("os").environ if n.startswith("CRACKSEG_")] + [
            "MODEL_PATH", "MODEL_VERSION", "INFERENCE_DEVICE", "LOG_LEVEL", "BATCH_SIZE", "MAX_WORKERS",
            "MEMORY_LIMIT"]:
        monkeypatch.delenv(name, raising=False)
    good = write(tmp_path, MINIMAL)
    assert check_config_main(good) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: {good}: device van-07") and "camera /dev/video0" in out
    bad = write(tmp_path, MINIMAL + "http:\n  prot: 1\n", "bad.yaml")
    assert check_config_main(bad) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5: http.prot: unknown key 'prot'; did you mean 'port'?" in err and "1 problem(s)" in err


def test_read_secret_sources(tmp_path: Path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt-password").write_text("s3cret\n")
    (creds / "empty").write_text("")
    env = {"CREDENTIALS_DIRECTORY": str(creds), "PW": "from-env"}
    assert read_secret(credential="mqtt-password", environ=env) == "s3cret"
    assert read_secret(credential="empty", environ=env) is None
    with pytest.raises(SecretError, match="LoadCredential=other:/etc/crackseg-edge/credentials/other"):
        read_secret(credential="other", environ=env)
    with pytest.raises(SecretError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        read_secret(credential="mqtt-password", environ={})
    secret_file = tmp_path / "pw"
    secret_file.write_text("filepw\n")
    secret_file.chmod(0o600)
    assert read_secret(file=secret_file, environ={}) == "filepw"
    with pytest.raises(SecretError, match="not found"):
        read_secret(file=tmp_path / "missing", environ={})
    assert read_secret(env_var="PW", environ=env) == "from-env"
    assert read_secret(environ=env) is None


def test_model_public_key_from_credential_or_file(tmp_path: Path):
    from edge_agent.config import model_public_key
    from edge_agent.config.sections import ModelConfig

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "model-signing-key").write_bytes(b"")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    assert model_public_key(ModelConfig(public_key_credential="model-signing-key"), env) is None  # not provisioned
    with pytest.raises(SecretError, match="no public key is provisioned"):
        model_public_key(ModelConfig(public_key_credential="model-signing-key", require_signature=True), env)
    (creds / "model-signing-key").write_bytes(b"-----BEGIN PUBLIC KEY-----\n")
    assert model_public_key(ModelConfig(public_key_credential="model-signing-key"), env) == creds / "model-signing-key"
    key = tmp_path / "k.pub"
    key.write_text("pem")
    assert model_public_key(ModelConfig(public_key_file=key), {}) == key


def test_names_moved_out_of_loader_still_import_from_it():
    """edge_agent/cli.py, agent/app.py, updates/ and demo.py import these from the loader module."""
    from edge_agent.config import check, errors, secrets
    from edge_agent.config import loader as old

    assert old.load_config is load_config and old.ConfigError is ConfigError and old.SecretError is SecretError
    assert old.check_config_main is check.check_config_main is check_config_main
    assert old.model_public_key is secrets.model_public_key and old.credential_path is secrets.credential_path
    assert old.read_secret is read_secret and old.ConfigIssue is errors.ConfigIssue
    with pytest.raises(AttributeError):
        old.no_such_name  # noqa: B018
