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
        # In the visitor's order of preference, by primary subtag: "ja-JP" means Japanese, and
        # a first choice of "fr-CA" wins over a later plain "en" (Werkzeug's best_match would
        # prefer the exact match further down the list).
        ranked = sorted(request.accept_languages, key=lambda pair: -pair[1])
        for tag, _quality in ranked:
            primary = tag.split("-")[0].split("_")[0].lower()
            if primary in languages:
                return primary
    return "en"


def init_app(app) -> None:
    """Bind Flask-Babel with the portal's translations and locale choice."""
    babel.init_app(app, locale_selector=select_locale)
    app.context_processor(
        lambda: {
            "current_locale": lambda: str(get_locale() or "en"),
            # How long a preference link lives, as told to contacts.
            "link_days": current_app.config["PORTAL_LINK_MAX_AGE"]["manage"] // 86400,
            "confirm_hours": current_app.config["PORTAL_LINK_MAX_AGE"]["confirm"] // 3600,
            "undo_hours": current_app.config["PORTAL_LINK_MAX_AGE"]["undo"] // 3600,
        }
    )
