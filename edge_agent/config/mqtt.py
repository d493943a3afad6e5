"""MQTT connection, topic and outbox settings (the ``mqtt:`` section of a device's YAML).

Secrets never live in the YAML: the password comes from a file, an environment variable or
a systemd credential, so a config file can be copied, diffed and committed without leaking
the broker password of a whole fleet.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from edge_agent.config.base import MAX_AGE_S, ConfigSection, path_exists
from edge_agent.config.sections import ByteCount, ConfigPath
from edge_agent.errors import UserError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
OUTBOX_FILENAME = "outbox.sqlite3"
_TOPIC_LEVEL_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class MqttCredentialError(UserError, ValueError):
    """The broker password could not be read; the message names the source and the fix."""


class TlsConfig(ConfigSection):
    """TLS material. With no ``ca_file`` the system's CA store verifies the broker."""

    ca_file: ConfigPath | None = Field(None, description="PEM CA bundle that signed the broker's certificate")
    cert_file: ConfigPath | None = Field(None, description="client certificate (PEM) for mutual TLS")
    key_file: ConfigPath | None = Field(None, description="client private key (PEM) for mutual TLS")
    insecure: bool = Field(False, description="skip the broker hostname check (never in production)")

    @model_validator(mode="after")
    def _pair_and_exist(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file go together: set both for mutual TLS, or neither")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path_exists(Path(path), file=True):
                raise ValueError(f"tls.{name} not found: {path} (fix the path or install the file)")
        return self


class OutboxConfig(ConfigSection):
    """Bounds of the on-disk store-and-forward queue for detections.

    Bounded so that a week without network cannot fill the SD card: past a bound the oldest
    messages are dropped and counted (``dropped`` in health), never the newest.
    """

    path: ConfigPath | None = Field(None, description=f"SQLite file; null = <state_dir>/{OUTBOX_FILENAME}")
    max_messages: int = Field(200_000, ge=1, le=100_000_000, description="oldest dropped beyond this many queued "
                                                                         "messages")
    max_bytes: ByteCount = Field(256 * 1024**2, description="oldest dropped beyond this many payload bytes "
                                                            "(e.g. 256M)")
    max_age_s: float = Field(7 * 24 * 3600.0, gt=0, le=MAX_AGE_S, description="messages older than this are dropped")
    inflight: int = Field(100, ge=1, le=65000, description="most unacknowledged messages handed to the MQTT "
                                                            "client at once")

    def resolve_path(self, state_dir: Path) -> Path:
        """The outbox file: the configured path, else ``<state_dir>/outbox.sqlite3``."""
        return Path(self.path) if self.path is not None else Path(state_dir) / OUTBOX_FILENAME


class MqttConfig(ConfigSection):
    """How the agent talks to the broker."""

    url: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host[:port] or mqtts://host[:port] (TLS)")
    protocol: Literal["5", "3.1.1"] = Field("5", description="MQTT protocol version")
    client_id: str | None = Field(None, min_length=1, max_length=128,
                                  description="null = crackseg-<device_id>")
    topic_prefix: str = Field("crackseg", description="topics are <prefix>/<device_id>/...")
    keepalive: int = Field(30, ge=5, le=3600, description="seconds between pings on an idle link")
    detections_qos: Literal[0, 1, 2] = Field(1, description="QoS of detections; 1 = kept until the broker "
                                                            "acknowledges")
    tls: TlsConfig | None = Field(None, description="TLS files; TLS itself is switched on by an mqtts:// url")
    username: str | None = Field(None, min_length=1)
    password_file: ConfigPath | None = Field(None, description="file holding the password (mode 600)")
    password_env: str | None = Field(None, min_length=1, description="environment variable holding the password")
    password_credential: str | None = Field(None, min_length=1,
                                            description="systemd credential name ($CREDENTIALS_DIRECTORY/<name>)")
    health_expiry_s: int | None = Field(300, ge=1, le=2**32 - 1, description="MQTT 5 message expiry of health "
                                                                              "reports; null = never expire")
    snapshot_format: Literal["auto", "jpeg", "base64"] = Field(
        "auto", description="jpeg = raw bytes (metadata in MQTT 5 user properties), base64 = JSON envelope; "
                            "auto = jpeg on MQTT 5, base64 on 3.1.1")
    reconnect_min_s: int = Field(1, ge=1, le=3600, description="first reconnect delay; doubles per failure")
    reconnect_max_s: int = Field(60, ge=1, le=3600, description="longest reconnect delay")
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)

    @model_validator(mode="before")
    @classmethod
    def _no_clear_text_password(cls, data: Any) -> Any:
        if isinstance(data, dict) and "password" in data:
            raise ValueError("mqtt.password in clear text is not allowed: put it in a file (password_file), an "
                             "environment variable (password_env) or a systemd credential (password_credential)")
        return data

    @field_validator("url")
    @classmethod
    def _url_ok(cls, v: str) -> str:
        parse_broker_url(v)
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_ok(cls, v: str) -> str:
        levels = v.split("/")
        if not v or any(not _TOPIC_LEVEL_RE.match(level) for level in levels):
            raise ValueError(f"topic_prefix '{v}' must be '/'-separated levels of letters, digits, '_', '-' or '.' "
                             "(no '+', '#', spaces or empty levels)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MqttConfig:
        sources = [n for n in ("password_file", "password_env", "password_credential") if getattr(self, n)]
        if len(sources) > 1:
            raise ValueError(f"set only one password source, not {' and '.join(sources)}")
        if sources and not self.username:
            raise ValueError(f"{sources[0]} is set but username is not: the broker needs both")
        if self.tls is not None and not self.tls_enabled:
            raise ValueError("tls settings are given but the url is mqtt://; use mqtts:// to switch TLS on")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        return self

    @property
    def host(self) -> str:
        return parse_broker_url(self.url)[1]

    @property
    def port(self) -> int:
        return parse_broker_url(self.url)[2]

    @property
    def tls_enabled(self) -> bool:
        return parse_broker_url(self.url)[0] == "mqtts"

    def resolved_client_id(self, device_id: str) -> str:
        return self.client_id or f"crackseg-{device_id}"

    def resolve_password(self, environ: dict[str, str] | None = None) -> str | None:
        """The password from its configured source, or None when none is configured."""
        return resolve_password(self, environ)


def parse_broker_url(url: str) -> tuple[str, str, int]:
    """``mqtts://broker:8883`` -> ("mqtts", "broker", 8883); the port defaults by scheme."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"broker url '{url}' is invalid ({exc}); write mqtt://host:1883 or "
                         "mqtts://host:8883") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker url '{url}' must start with mqtt:// or mqtts:// (TLS)")
    if not parts.hostname:
        raise ValueError(f"broker url '{url}' has no host; write mqtt://host:1883")
    if parts.username or parts.password:
        raise ValueError(f"broker url '{url}' must not hold credentials; use username and password_file/"
                         "password_env/password_credential")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker url '{url}' must be only scheme://host:port")
    return parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


def resolve_password(cfg: MqttConfig, environ: dict[str, str] | None = None) -> str | None:
    """Read the broker password from the one configured source.

    One trailing newline is stripped (``echo secret > file`` writes one); an empty password
    is refused because it is almost always a deployment mistake, not a real password.
    """
    env = os.environ if environ is None else environ
    if cfg.password_file is not None:
        path = Path(cfg.password_file)
        where = f"mqtt.password_file {path}"
        value = _read_secret(path, where, "create it (mode 600) or fix the path")
    elif cfg.password_env is not None:
        where = f"mqtt.password_env: environment variable {cfg.password_env}"
        if cfg.password_env not in env:
            raise MqttCredentialError(f"{where} is not set; export it or use password_file/password_credential")
        value = env[cfg.password_env]
    elif cfg.password_credential is not None:
        where = f"mqtt.password_credential '{cfg.password_credential}'"
        cred_dir = env.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise MqttCredentialError(f"{where} needs $CREDENTIALS_DIRECTORY, which systemd sets for units with "
                                      f"LoadCredential={cfg.password_credential}:<file>; it is not set")
        value = _read_secret(Path(cred_dir) / cfg.password_credential, where,
                             f"add LoadCredential={cfg.password_credential}:<file> to the unit")
    else:
        return None
    value = value[:-1] if value.endswith("\n") else value
    value = value[:-1] if value.endswith("\r") else value
    if not value:
        raise MqttCredentialError(f"{where} is empty; put the broker password there")
    return value


def _read_secret(path: Path, where: str, fix: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MqttCredentialError(f"{where}: file not found; {fix}") from None
    except PermissionError:
        raise MqttCredentialError(f"{where}: permission denied; make it readable by the agent's user") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MqttCredentialError(f"{where}: cannot read ({exc})") from None
