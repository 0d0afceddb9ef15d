"""Reading and checking the configuration before anything else starts."""

import copy
import re
from pathlib import Path
from urllib.parse import urlsplit

from portal.keys import LINK_PURPOSES
from portal.keys import ConfigError
from portal.keys import load_demo_secrets

DEMO_BASE_URL = "http://127.0.0.1:5000"
# A plain ASCII address: it goes into a mailto: URL inside a mail header.
MAILTO_ADDRESS = re.compile(r"[A-Za-z0-9._+-]{1,64}@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")


def load(app, test_config: dict | None) -> None:
    """Fill app.config from defaults, the environment and test values, then check it."""
    app.config.from_object("config.Config")
    # from_object shares the class's dicts and lists; a nested variable such as
    # FLASK_PORTAL_LINK_MAX_AGE__manage would otherwise change them for every app.
    app.config.update(copy.deepcopy(dict(app.config)))
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.from_mapping(test_config)
    if not isinstance(app.config["PORTAL_DEMO"], bool):
        raise ConfigError("FLASK_PORTAL_DEMO must be true or false")
    if app.config["PORTAL_DEMO"]:
        _fill_demo_defaults(app)
    if app.config["SQLALCHEMY_DATABASE_URI"] is None:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{app.instance_path}/portal.sqlite3"
    _check(app.config)
    # url_for(_external=True) and the test client follow the public address's scheme.
    app.config["PREFERRED_URL_SCHEME"] = urlsplit(app.config["PORTAL_BASE_URL"]).scheme


def _fill_demo_defaults(app) -> None:
    """Give the demo what a deployment must configure: keys, a base URL, plain-HTTP cookies."""
    for name, value in load_demo_secrets(app.instance_path).items():
        if not app.config.get(name):
            app.config[name] = value
    if not app.config.get("PORTAL_BASE_URL"):
        app.config["PORTAL_BASE_URL"] = DEMO_BASE_URL
    # The demo is served over plain HTTP on loopback, where a Secure cookie would be dropped.
    app.config["SESSION_COOKIE_SECURE"] = False
    # Outgoing mail goes to the demo mailbox, a capturing SMTP server started with the demo.
    app.config["MAIL_SERVER"] = "127.0.0.1"
    app.config["MAIL_PORT"] = app.config["PORTAL_DEMO_SMTP_PORT"]


def _check(config) -> None:
    """Raise ConfigError naming the first missing or malformed variable."""
    secret = config.get("SECRET_KEY")
    if not isinstance(secret, str) or len(secret) < 16:
        raise ConfigError("FLASK_SECRET_KEY is missing or shorter than 16 characters")
    base_url = config.get("PORTAL_BASE_URL")
    parts = urlsplit(base_url) if isinstance(base_url, str) else None
    if not parts or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            "FLASK_PORTAL_BASE_URL is missing or not an http(s) URL "
            "(the public address emailed links are built from, e.g. https://prefs.example.com)"
        )
    if parts.query or parts.fragment:
        raise ConfigError("FLASK_PORTAL_BASE_URL must not have a query or a fragment")
    for name in ("MAIL_USE_TLS", "MAIL_USE_SSL", "MAIL_SUPPRESS_SEND", "SESSION_COOKIE_SECURE"):
        if not isinstance(config.get(name), bool):
            raise ConfigError(f"FLASK_{name} must be true or false")
    port = config.get("MAIL_PORT")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError("FLASK_MAIL_PORT must be a port number between 1 and 65535")
    if not isinstance(config.get("SQLALCHEMY_DATABASE_URI"), str):
        raise ConfigError("FLASK_SQLALCHEMY_DATABASE_URI must be a database URL")
    hops = config.get("PORTAL_PROXY_HOPS")
    if not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= 5:
        raise ConfigError("FLASK_PORTAL_PROXY_HOPS must be the number of proxies in front, 0 to 5")
    trusted = config.get("TRUSTED_HOSTS")
    if trusted is not None and not (
        isinstance(trusted, list) and all(isinstance(h, str) and h for h in trusted)
    ):
        raise ConfigError('FLASK_TRUSTED_HOSTS must be a list of host names, e.g. ["a.example"]')
    mailto = config.get("PORTAL_UNSUBSCRIBE_MAILTO")
    if mailto is not None and not (isinstance(mailto, str) and MAILTO_ADDRESS.fullmatch(mailto)):
        raise ConfigError("FLASK_PORTAL_UNSUBSCRIBE_MAILTO must be an email address, or unset")
    languages = config.get("PORTAL_LANGUAGES")
    if not isinstance(languages, list) or "en" not in languages:
        raise ConfigError('FLASK_PORTAL_LANGUAGES must be a list that includes "en"')
    ages = config.get("PORTAL_LINK_MAX_AGE")
    # A purpose left out would fail every link of that purpose later, with a server error.
    if (
        not isinstance(ages, dict)
        or not set(LINK_PURPOSES) <= set(ages)
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in ages.values())
    ):
        raise ConfigError(
            "FLASK_PORTAL_LINK_MAX_AGE must map each link purpose "
            f"({', '.join(LINK_PURPOSES)}) to seconds > 0"
        )
