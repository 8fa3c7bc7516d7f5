"""Settings: defaults in ``data/default.toml`` (documented there), a site file on top.

Every value is checked against the type of its default, so a typo in the site file is reported
with the key and the file instead of surfacing later as a strange call failure.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

DEFAULTS_PATH = Path(__file__).with_name("data") / "default.toml"
SITE_PATH = Path("/etc/centralka/centralka.toml")

# Environment variables that override one setting each (documented in default.toml/README).
ENV_OVERRIDES = {
    "CENTRALKA_SIP_PORT": ("sip", "port"),
    "CENTRALKA_SIP_ADDRESS": ("sip", "address"),
    "CENTRALKA_DATA_DIR": ("box", "data_dir"),
    "CENTRALKA_SOCKET": ("control", "socket"),
    "CENTRALKA_MODEM": ("modem", "device"),
}


class Section(dict):
    """A settings table with attribute access: ``settings.sip.port``."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass
class Settings:
    sections: dict = field(default_factory=dict)
    source: str = "defaults"

    def __getattr__(self, name):
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    @property
    def data_dir(self) -> Path:
        return Path(self.box.data_dir)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "centralka.db"

    @property
    def prompt_dir(self) -> Path:
        return self.data_dir / "prompts"

    @property
    def tz(self):
        """The clinic's time zone (``[box] timezone``): times people read and hear."""
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.box.timezone)


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc


def _coerce(value, default, where):
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "tak", "0", "false", "no", "nie"):
            return value.lower() in ("1", "true", "yes", "tak")
    elif isinstance(default, int) and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, list):
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(default, dict):
        # A table setting (e.g. mail.teams: team -> addresses, sms templates by name).
        if isinstance(value, dict):
            return value
    raise ConfigError(f"{where}: expected {type(default).__name__}, got {value!r}")


def load_settings(path: str | os.PathLike | None = None, env=None, **overrides) -> Settings:
    """Defaults, then the site file (if any), then environment, then keyword overrides.

    ``overrides`` take ``section={"key": value}`` dicts; tests use them to point a box at
    free ports and a temporary data directory.
    """
    env = os.environ if env is None else env
    base = _read_toml(DEFAULTS_PATH)
    if path is None:
        path = env.get("CENTRALKA_CONFIG") or (SITE_PATH if SITE_PATH.exists() else None)
    layers = []
    if path is not None:
        layers.append((str(path), _read_toml(Path(path))))
    env_layer: dict = {}
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            env_layer.setdefault(section, {})[key] = env[var]
    layers.append(("environment", env_layer))
    layers.append(("overrides", overrides))

    sections = {name: Section(values) for name, values in base.items()}
    for origin, layer in layers:
        for section, values in layer.items():
            if section not in sections:
                raise ConfigError(f"{origin}: unknown section [{section}]")
            if not isinstance(values, dict):
                raise ConfigError(f"{origin}: [{section}] must be a table")
            for key, value in values.items():
                if key not in base[section]:
                    raise ConfigError(f"{origin}: unknown setting {section}.{key}")
                sections[section][key] = _coerce(value, base[section][key], f"{origin}: {section}.{key}")
    if not 0 < sections["sip"]["port"] < 65536:
        raise ConfigError(f"sip.port: {sections['sip']['port']} is not a port number")
    return Settings(sections=sections, source=str(path) if path else "defaults")
