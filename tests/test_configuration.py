"""Start-up configuration: fail closed, read the environment as JSON, the demo's own keys."""

import base64
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_config

from portal import ConfigError
from portal import create_app
from portal.keys import PURPOSES
from portal.keys import new_keyset

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Start every test from an environment without FLASK_ settings."""
    for name in list(os.environ):
        if name.startswith("FLASK_"):
            monkeypatch.delenv(name)


@pytest.fixture
def config(tmp_path) -> dict:
    return make_config(f"sqlite:///{tmp_path}/portal.sqlite3")


def _without(config: dict, name: str) -> dict:
    return {key: value for key, value in config.items() if key != name}


def _set_environment(monkeypatch, tmp_path, **overrides) -> None:
    """Configure a complete deployment through FLASK_ variables only, as an operator does."""
    values = {
        "FLASK_SECRET_KEY": "an-operator-chosen-secret-key",
        "FLASK_PORTAL_BASE_URL": "https://prefs.example.com",
        "FLASK_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/portal.sqlite3",
        **{f"FLASK_{name}": json.dumps(new_keyset()) for name in PURPOSES.values()},
        **overrides,
    }
    for name, value in values.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


def test_complete_configuration_starts(config, tmp_path):
    app = create_app(config, instance_path=str(tmp_path))
    assert app.config["PORTAL_BASE_URL"] == "https://prefs.example.test"


def test_refuses_to_start_without_a_secret_key(config, tmp_path):
    with pytest.raises(ConfigError, match="FLASK_SECRET_KEY"):
        create_app(_without(config, "SECRET_KEY"), instance_path=str(tmp_path))


def test_refuses_a_short_secret_key(config, tmp_path):
    with pytest.raises(ConfigError, match="FLASK_SECRET_KEY"):
        create_app({**config, "SECRET_KEY": "dev"}, instance_path=str(tmp_path))


@pytest.mark.parametrize("name", sorted(PURPOSES.values()))
def test_refuses_to_start_without_each_key_set(config, tmp_path, name):
    with pytest.raises(ConfigError, match=f"FLASK_{name} is missing"):
        create_app(_without(config, name), instance_path=str(tmp_path))


def _short_key() -> str:
    return base64.urlsafe_b64encode(b"\x01" * 16).decode()


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ('{"active": "k1", "keys": {"k1": ', "not valid JSON"),
        ({"active": "k1", "keys": {"k1": "not base64 at all!"}}, "k1"),
        ({"active": "k1", "keys": {"k1": None}}, "k1"),
        ({"active": "k1", "keys": {}}, "at least one key"),
        ({"active": "k1", "keys": ["k1"]}, "at least one key"),
        ({"keys": {"k1": "x"}}, "exactly 'active' and 'keys'"),
        (["k1"], "exactly 'active' and 'keys'"),
        ({"active": "k1", "keys": {"k1": "__SHORT__"}}, "at least 32 bytes"),
        ({"active": "k2", "keys": {"k1": "__GOOD__"}}, "active id 'k2' is not one of its keys"),
        ({"active": "k 1", "keys": {"k 1": "__GOOD__"}}, "letters, digits or '-'"),
    ],
)
def test_refuses_a_malformed_key_set(config, tmp_path, value, complaint):
    if isinstance(value, dict) and isinstance(value.get("keys"), dict):
        replacements = {"__SHORT__": _short_key(), "__GOOD__": new_keyset()["keys"]["k1"]}
        value = {
            **value,
            "keys": {k: replacements.get(v, v) for k, v in value["keys"].items()},
        }
    with pytest.raises(ConfigError) as raised:
        create_app({**config, "PORTAL_LEDGER_KEYS": value}, instance_path=str(tmp_path))
    message = str(raised.value)
    assert message.startswith("FLASK_PORTAL_LEDGER_KEYS")
    assert complaint in message
    assert "\n" not in message


def test_refuses_to_start_without_a_base_url(config, tmp_path):
    with pytest.raises(ConfigError, match="FLASK_PORTAL_BASE_URL"):
        create_app(_without(config, "PORTAL_BASE_URL"), instance_path=str(tmp_path))


@pytest.mark.parametrize(
    "base_url", ["prefs.example.com", "ftp://prefs.example.com", "https://", "https://x/?a=1"]
)
def test_refuses_a_base_url_that_is_not_a_public_http_address(config, tmp_path, base_url):
    with pytest.raises(ConfigError, match="FLASK_PORTAL_BASE_URL"):
        create_app({**config, "PORTAL_BASE_URL": base_url}, instance_path=str(tmp_path))


@pytest.mark.parametrize(
    "ages",
    [
        {"manage": 86400},
        {"manage": 86400, "confirm": 3600, "undo": 3600, "export": 0},
        {"manage": 86400, "confirm": "1h", "undo": 3600, "export": 3600},
        [86400],
    ],
)
def test_refuses_link_ages_that_leave_a_purpose_without_a_positive_limit(config, tmp_path, ages):
    with pytest.raises(ConfigError, match="FLASK_PORTAL_LINK_MAX_AGE"):
        create_app({**config, "PORTAL_LINK_MAX_AGE": ages}, instance_path=str(tmp_path))


def test_one_link_age_can_be_changed_from_the_environment(monkeypatch, tmp_path):
    # Flask's nested form (double underscore) changes one purpose and keeps the others.
    _set_environment(monkeypatch, tmp_path, FLASK_PORTAL_LINK_MAX_AGE__manage="3600")
    app = create_app(instance_path=str(tmp_path))
    assert app.config["PORTAL_LINK_MAX_AGE"]["manage"] == 3600
    assert app.config["PORTAL_LINK_MAX_AGE"]["confirm"] == 48 * 3600
    # The change belongs to that app alone, not to the defaults of the next one.
    monkeypatch.delenv("FLASK_PORTAL_LINK_MAX_AGE__manage")
    other = create_app(instance_path=str(tmp_path))
    assert other.config["PORTAL_LINK_MAX_AGE"]["manage"] == 30 * 24 * 3600


def test_starts_from_the_environment_alone(monkeypatch, tmp_path):
    _set_environment(monkeypatch, tmp_path)
    app = create_app(instance_path=str(tmp_path))
    assert app.config["SECRET_KEY"] == "an-operator-chosen-secret-key"
    assert app.config["PORTAL_BASE_URL"] == "https://prefs.example.com"


@pytest.mark.parametrize(("text", "value"), [("false", False), ("true", True)])
def test_mail_use_tls_reads_as_a_boolean(monkeypatch, tmp_path, text, value):
    _set_environment(monkeypatch, tmp_path, FLASK_MAIL_USE_TLS=text)
    app = create_app(instance_path=str(tmp_path))
    assert app.config["MAIL_USE_TLS"] is value


def test_a_boolean_that_is_not_json_stops_start_up(monkeypatch, tmp_path):
    # "no" or "False" would be truthy strings; refusing them beats guessing.
    _set_environment(monkeypatch, tmp_path, FLASK_MAIL_USE_TLS="no")
    with pytest.raises(ConfigError, match="FLASK_MAIL_USE_TLS"):
        create_app(instance_path=str(tmp_path))


def test_a_malformed_key_set_in_the_environment_names_the_variable(monkeypatch, tmp_path):
    _set_environment(monkeypatch, tmp_path, FLASK_PORTAL_FIELD_KEYS='{"active": "k1",')
    with pytest.raises(ConfigError, match="FLASK_PORTAL_FIELD_KEYS is not valid JSON"):
        create_app(instance_path=str(tmp_path))


def test_a_missing_key_set_in_the_environment_names_the_variable(monkeypatch, tmp_path):
    _set_environment(monkeypatch, tmp_path, FLASK_PORTAL_SUPPRESSION_KEYS=None)
    with pytest.raises(ConfigError, match="FLASK_PORTAL_SUPPRESSION_KEYS is missing"):
        create_app(instance_path=str(tmp_path))


def _demo_app(instance: Path):
    return create_app(
        {"PORTAL_DEMO": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{instance}/demo.sqlite3"},
        instance_path=str(instance),
    )


def _secrets_of(app) -> dict:
    keysets = app.extensions["portal_keys"]
    return {"SECRET_KEY": app.config["SECRET_KEY"], **{p: keysets[p] for p in keysets}}


def test_demo_generates_its_keys_into_the_instance_folder_once(tmp_path):
    instance = tmp_path / "instance"
    first = _demo_app(instance)
    secrets_file = instance / "demo-secrets.json"
    assert secrets_file.exists()
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    written = secrets_file.read_text()

    second = _demo_app(instance)
    assert secrets_file.read_text() == written
    assert _secrets_of(second) == _secrets_of(first)
    assert first.config["PORTAL_BASE_URL"] == "http://127.0.0.1:5000"
    # Served on plain HTTP on loopback, the demo's session cookie cannot be Secure.
    assert first.config["SESSION_COOKIE_SECURE"] is False


def test_demo_keys_differ_between_instance_folders(tmp_path):
    one = _demo_app(tmp_path / "one")
    two = _demo_app(tmp_path / "two")
    assert one.config["SECRET_KEY"] != two.config["SECRET_KEY"]
    assert one.extensions["portal_keys"]["link"] != two.extensions["portal_keys"]["link"]


def test_demo_switched_on_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASK_PORTAL_DEMO", "true")
    monkeypatch.setenv("FLASK_SQLALCHEMY_DATABASE_URI", f"sqlite:///{tmp_path}/demo.sqlite3")
    app = create_app(instance_path=str(tmp_path))
    assert app.config["PORTAL_DEMO"] is True
    assert (tmp_path / "demo-secrets.json").exists()


def test_demo_keeps_configured_secrets(config, tmp_path):
    app = create_app({**config, "PORTAL_DEMO": True}, instance_path=str(tmp_path))
    assert app.config["SECRET_KEY"] == config["SECRET_KEY"]
    assert app.config["PORTAL_BASE_URL"] == config["PORTAL_BASE_URL"]


def test_demo_flag_must_be_a_boolean(monkeypatch, tmp_path):
    _set_environment(monkeypatch, tmp_path, FLASK_PORTAL_DEMO="yes")
    with pytest.raises(ConfigError, match="FLASK_PORTAL_DEMO"):
        create_app(instance_path=str(tmp_path))


def _run_wsgi(code: str, environment: dict) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process, as a WSGI server would start the portal."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLASK_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        env={**env, **environment},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _deployment_environment(tmp_path) -> dict:
    return {
        "FLASK_PORTAL_BASE_URL": "https://prefs.example.com",
        "FLASK_SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/portal.sqlite3",
        **{f"FLASK_{name}": json.dumps(new_keyset()) for name in PURPOSES.values()},
    }


def test_wsgi_without_a_secret_exits_with_one_line(tmp_path):
    result = _run_wsgi("import wsgi", _deployment_environment(tmp_path))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "FLASK_SECRET_KEY" in lines[0]


def test_wsgi_with_a_complete_environment_exposes_the_app(tmp_path):
    environment = {
        **_deployment_environment(tmp_path),
        "FLASK_SECRET_KEY": "an-operator-chosen-secret-key",
    }
    result = _run_wsgi("import wsgi; print(wsgi.app.config['PORTAL_BASE_URL'])", environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "https://prefs.example.com"
