"""The GDPR contact preference portal."""

from flask import Flask
from flask_wtf import CSRFProtect

from portal.keys import ConfigError

__all__ = ["ConfigError", "create_app"]

csrf = CSRFProtect()


def create_app(test_config: dict | None = None) -> Flask:
    """Build the application: configuration, extensions, blueprints, commands."""
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder="../templates",
        static_folder="../static",
    )

    from portal import configuration
    from portal import db
    from portal import i18n
    from portal import keys

    configuration.load(app, test_config)
    keys.init_app(app)
    db.init_app(app)
    i18n.init_app(app)
    csrf.init_app(app)

    from portal import preferences

    app.register_blueprint(preferences.bp)

    from portal import cli

    cli.init_app(app)
    return app
