"""Default configuration of the portal.

Every value here is a safe default. Deployments override them with environment variables
prefixed ``FLASK_`` (read by ``app.config.from_prefixed_env()``, values parsed as JSON), and
tests pass a dict to the factory. Secrets have no default: start-up fails without them,
except in the demo, which generates its own keys into the instance folder.
"""


class Config:
    # Flask. SECRET_KEY signs the staff session cookie only; the portal's other secrets are the
    # key sets below, one per purpose, so that rotating one never breaks another.
    SECRET_KEY: str | None = None
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    SESSION_COOKIE_SECURE = True
    PREFERRED_URL_SCHEME = "https"
    MAX_CONTENT_LENGTH = 1024 * 1024

    # Database. None means SQLite in the instance folder (the embedded default).
    SQLALCHEMY_DATABASE_URI: str | None = None
    # db.init_app adds hide_parameters to whatever is set here (see there).
    SQLALCHEMY_ENGINE_OPTIONS: dict = {}
    # A pooled database connection idle for longer than this is pinged before use, and
    # replaced if the server dropped it (a restart, an idle timeout). One in steady use is not:
    # a ping before every request would be one more round trip each time.
    PORTAL_DB_PING_IDLE_SECONDS = 10

    # Mail (Flask-Mail). Sending is never suppressed implicitly: Flask-Mail would otherwise
    # follow app.testing and silently drop every message in tests.
    MAIL_SERVER = "127.0.0.1"
    MAIL_PORT = 25
    MAIL_USE_TLS = False
    MAIL_USE_SSL = False
    MAIL_USERNAME: str | None = None
    MAIL_PASSWORD: str | None = None
    MAIL_DEFAULT_SENDER = "privacy@example.com"
    MAIL_SUPPRESS_SEND = False

    # Languages (Flask-Babel). The contact-facing pages speak these.
    BABEL_DEFAULT_LOCALE = "en"
    BABEL_DEFAULT_TIMEZONE = "UTC"
    PORTAL_LANGUAGES = ["en", "de", "fr", "ja"]

    # The portal's own settings.
    # Public base URL every emailed link is built from, never the request's Host header.
    PORTAL_BASE_URL: str | None = None
    # The demo generates missing keys into the instance folder and serves demo data.
    PORTAL_DEMO = False
    # The port of the demo's capturing SMTP server (the demo mailbox).
    PORTAL_DEMO_SMTP_PORT = 2525
    # An inbound address that unsubscribes whoever writes to it (processed by the business's
    # mail server); when set, List-Unsubscribe offers it as a mailto beside the https link.
    PORTAL_UNSUBSCRIBE_MAILTO: str | None = None
    # Key sets, one per purpose: {"active": "<key id>", "keys": {"<key id>": "<base64 key>"}}.
    PORTAL_LINK_KEYS: dict | None = None
    PORTAL_FIELD_KEYS: dict | None = None
    PORTAL_LEDGER_KEYS: dict | None = None
    PORTAL_SUPPRESSION_KEYS: dict | None = None
    PORTAL_UNSUBSCRIBE_KEYS: dict | None = None
    # How long a web process reuses settings, lists and consent texts before reading them
    # again: staff changes show on contacts' pages within this many seconds.
    PORTAL_CATALOGUE_SECONDS = 5
    # Maximum age of signed links, in seconds, per purpose.
    PORTAL_LINK_MAX_AGE = {
        "manage": 30 * 24 * 3600,
        "confirm": 48 * 3600,
        "undo": 48 * 3600,
        "export": 48 * 3600,
        # The double opt-in link: long enough for someone back from a week away.
        "doi": 7 * 24 * 3600,
        # Engagement tracking in a campaign (the open pixel, the click redirect): past this,
        # a click still leads on to its address but nothing is recorded any more.
        "track": 365 * 24 * 3600,
    }
    # Double opt-in hygiene (B9): reminders per request (0: none), hours before one is sent,
    # and days after which an unconfirmed web-form sign-up is pruned.
    PORTAL_DOI_MAX_REMINDERS = 1
    PORTAL_DOI_REMIND_AFTER_HOURS = 48
    PORTAL_DOI_PRUNE_AFTER_DAYS = 30

    # The outbox (R5): SMTP timeout in seconds, messages per connection, retry limits.
    PORTAL_SMTP_TIMEOUT = 30
    PORTAL_OUTBOX_BATCH = 50
    PORTAL_OUTBOX_MAX_ATTEMPTS = 12
    PORTAL_OUTBOX_LEASE_SECONDS = 300
    PORTAL_MAX_BODY_BYTES = 512 * 1024

    # Web hardening. TRUSTED_HOSTS defaults to the base URL's host outside tests.
    TRUSTED_HOSTS: list[str] | None = None
    # How many proxies in front of the portal set X-Forwarded-For/-Proto (0: none).
    PORTAL_PROXY_HOPS = 0
    # Rate-limit counters: in memory for one process; redis://... when there are several.
    RATELIMIT_STORAGE_URI = "memory://"
    RATELIMIT_HEADERS_ENABLED = True
