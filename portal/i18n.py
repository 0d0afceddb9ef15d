"""Languages (B11): the contact's own language, then the browser's, then English."""

from flask import current_app
from flask import g
from flask import has_request_context
from flask import request
from flask_babel import Babel
from flask_babel import get_locale

babel = Babel()


def select_locale() -> str:
    """Choose the language of the current page."""
    languages = current_app.config["PORTAL_LANGUAGES"]
    contact_language = g.get("contact_language")
    if contact_language in languages:
        return contact_language
    if has_request_context():
        return request.accept_languages.best_match(languages) or "en"
    return "en"


def init_app(app) -> None:
    """Bind Flask-Babel with the portal's translations and locale choice."""
    babel.init_app(app, locale_selector=select_locale)
    app.context_processor(
        lambda: {
            "current_locale": lambda: str(get_locale() or "en"),
            # How long a preference link lives, as told to contacts.
            "link_days": current_app.config["PORTAL_LINK_MAX_AGE"]["manage"] // 86400,
        }
    )
