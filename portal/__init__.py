"""The GDPR contact preference portal."""

from flask import Flask
from flask import current_app
from flask import request
from flask import url_for
from flask_wtf import CSRFProtect

from portal import hooks
from portal import i18n
from portal.keys import ConfigError
from portal.sessions import CookieSessions
from portal.sessions import flashed_messages

__all__ = ["ConfigError", "create_app"]

csrf = CSRFProtect()


class Portal(Flask):
    """Flask, logging an unhandled error without the link token its URL may carry."""

    def log_exception(self, exc_info) -> None:
        """Log an unhandled error by endpoint and method, and a link token by its digest."""
        from portal.links import token_digest

        # Flask logs request.path, and /p/<token> (like every contact link) is a working key
        # to a contact's page. The rule shows "<token>" where the token was.
        rule = request.url_rule
        where = f"{request.endpoint} {rule.rule}" if rule is not None else "an unrouted request"
        token = (request.view_args or {}).get("token")
        digest = f" (token {token_digest(token)})" if isinstance(token, str) else ""
        self.logger.error("Exception on %s [%s]%s", where, request.method, digest,
                          exc_info=exc_info)


def create_app(test_config: dict | None = None, instance_path: str | None = None) -> Flask:
    """Build the application: configuration, extensions, blueprints, commands."""
    app = Portal(
        __name__,
        instance_path=instance_path,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
    )
    # Templates compiled once per language (portal/i18n.py); set before the first use.
    app.jinja_environment = i18n.LocalizedEnvironment
    app.session_interface = CookieSessions()

    from portal import configuration
    from portal import db
    from portal import hardening
    from portal import keys
    from portal import mail
    from portal import staff

    configuration.load(app, test_config)
    keys.init_app(app)
    db.init_app(app)
    i18n.init_app(app)
    _init_csrf(app)
    mail.init_app(app)
    staff.init_app(app)
    hardening.init_app(app)

    from portal import backoffice
    from portal import preferences
    from portal import signup
    from portal import tracking

    app.register_blueprint(preferences.bp)
    app.register_blueprint(backoffice.bp)
    app.register_blueprint(signup.bp)
    app.register_blueprint(tracking.bp)

    from portal import cli
    from portal import logs

    cli.init_app(app)
    logs.init_app(app)
    app.add_template_global(_static_url, "static_url")
    app.add_template_global(flashed_messages)
    return app


def _init_csrf(app: Flask) -> None:
    """Install Flask-WTF's CSRF check, asked about a request only when its method is checked.

    Its check before every request looks up whether the view is exempt before it looks at
    the method, so every GET (each contact's page) paid for a lookup that cannot matter.
    """
    for registry, hook in hooks.installed(app, csrf.init_app):
        hooks.replace(registry, hook, _on_checked_methods(hook))


def _on_checked_methods(check):
    def check_csrf():
        if request.method in current_app.config["WTF_CSRF_METHODS"]:
            return check()
        return None

    return check_csrf


#: Each static file's URL by (script root, file name): the same on every page, and for every
#: app this module builds (their static folder and URL path are fixed above).
_STATIC_URLS: dict[tuple[str, str], str] = {}


def _static_url(filename: str) -> str:
    """Return url_for("static", filename=filename), built once per script root."""
    key = (request.script_root, filename)
    url = _STATIC_URLS.get(key)
    if url is None:
        url = _STATIC_URLS[key] = url_for("static", filename=filename)
    return url
