"""Languages (B11): the contact's own language, then the browser's, then English."""

import re
import weakref
from contextvars import ContextVar
from datetime import UTC
from datetime import date
from datetime import datetime
from functools import lru_cache

from babel import Locale
from babel.dates import format_date
from flask import current_app
from flask import g
from flask import has_request_context
from flask import request
from flask.templating import Environment
from flask_babel import Babel
from flask_babel import get_locale
from flask_babel import get_translations
from jinja2 import pass_context
from jinja2 import pass_eval_context
from jinja2.ext import Extension
from jinja2.lexer import Token
from markupsafe import Markup
from markupsafe import escape

babel = Babel()

#: The translations of the template being compiled (see LocalizedEnvironment).
_compiling = ContextVar("compiling_translations", default=None)
#: `{{ _("...") }}`: a constant string alone in an expression, translated when compiled.
_CONSTANT_GETTEXT = (
    ("variable_begin", None), ("name", "_"), ("lparen", None), ("string", None),
    ("rparen", None), ("variable_end", None),
)
#: `_("...")` anywhere else, or `_("... %(name)s ...", name=...)`: a constant string with
#: or without placeholders (what follows the string is a comma or the closing parenthesis).
_FORMAT_GETTEXT = (("name", "_"), ("lparen", None), ("string", None))
#: A placeholder's conversion: "s" in "%(name)s", "d" in "%(count)d" ("%%" is none).
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?([a-zA-Z%])")


def _matches(window, pattern) -> bool:
    return len(window) == len(pattern) and all(
        token.type == kind and (value is None or token.value == value)
        for token, (kind, value) in zip(window, pattern, strict=True)
    )


@pass_eval_context
def _translated(eval_context, text: str, **variables) -> str:
    """Fill a translation's placeholders, as the i18n extension's new-style gettext does."""
    if not eval_context.autoescape:
        return text % variables
    if _only_text_placeholders(text):
        # What Markup's formatting makes of %(name)s, without wrapping every value in a
        # helper object first: each value escaped, then put in its place.
        return Markup(text % {name: escape(value) for name, value in variables.items()})
    return Markup(text) % variables  # %(count)d and the like: Markup converts for them


@lru_cache(maxsize=1024)
def _only_text_placeholders(text: str) -> bool:
    return all(kind in ("s", "%") for kind in _PLACEHOLDER.findall(text))


class CompileTimeGettext(Extension):
    """Translate `_("constant")` while compiling, as the page's language has it.

    `{{ _("text") }}` becomes the text itself: what the i18n extension's new-style gettext
    gives at run time (the translation, marked safe, with `%%` turned into `%`). Any other
    call on a constant string, `_("Hello %(name)s.", name=...)` or `_("Hello,")` inside a
    larger expression, keeps only the formatting for run time: it becomes
    `_translated("Hallo %(name)s.", name=...)`, which formats as new-style gettext does (the
    values escaped in an HTML template). So nothing changes but the cost: a page has some
    thirty such strings, each otherwise a call through the gettext callables per request.
    Plural forms, and a string that is not a constant, stay calls at run time.
    """

    def filter_stream(self, stream):
        translations = _compiling.get()
        if translations is None:
            yield from stream
            return
        tokens = list(stream)
        index = 0
        while index < len(tokens):
            constant = tokens[index:index + len(_CONSTANT_GETTEXT)]
            if _matches(constant, _CONSTANT_GETTEXT):
                text = _translation(translations, constant[3].value, {})
                if text is not None:
                    yield Token(constant[0].lineno, "data", text)
                    index += len(constant)
                    continue
            call = tokens[index:index + len(_FORMAT_GETTEXT)]
            if (
                _matches(call, _FORMAT_GETTEXT)
                and (index == 0 or tokens[index - 1].type != "dot")
                and index + 3 < len(tokens) and tokens[index + 3].type in ("comma", "rparen")
            ):
                text = _translation(translations, call[2].value, None)
                if text is not None:
                    yield Token(call[0].lineno, "name", "_translated")
                    yield call[1]
                    yield Token(call[2].lineno, "string", text)
                    index += 3  # the arguments, if any, and the parenthesis follow as they are
                    continue
            yield tokens[index]
            index += 1


def _translation(translations, message: str, values: dict | None) -> str | None:
    """Return the translation (formatted with values, unless None), or None to leave the call
    for run time (a string the formatting would refuse)."""
    try:
        text = translations.ugettext(message)
        return text if values is None else text % values
    except (KeyError, TypeError, ValueError):
        return None


class LocalizedEnvironment(Environment):
    """Flask's template environment, keeping one compiled template per language."""

    def _load_template(self, name, globals):
        code = language()
        cache_key = (weakref.ref(self.loader), name, code)
        template = self.cache.get(cache_key) if self.cache is not None else None
        if template is not None and (not self.auto_reload or template.is_up_to_date):
            if globals:
                template.globals.update(globals)
            return template
        compiling = _compiling.set(get_translations() if code else None)
        try:
            template = self.loader.load(self, name, self.make_globals(globals))
        finally:
            _compiling.reset(compiling)
        if self.cache is not None:
            self.cache[cache_key] = template
        return template


def language() -> str:
    """Return the current page's language code ("de"), as str(get_locale()) gives it, cheaply.

    A contact's page asks about ten times (which compiled template, which wording, which date
    format). Flask-Babel's get_locale goes through `g` three times per call and Babel builds
    the code again for every str(): this reads the locale Flask-Babel keeps for the request
    (a force_locale's included, which replaces it there) and keeps its code beside it.
    """
    try:
        state = g._flask_babel  # Flask-Babel's own state for this request
        locale = state.babel_locale
    except (AttributeError, RuntimeError):
        locale = None  # not chosen yet in this request, or outside any
    if locale is None:
        return str(get_locale() or "")
    known = state.__dict__.get("portal_language")
    if known is None or known[0] is not locale:
        known = state.portal_language = (locale, str(locale))
    return known[1]


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


def _selected_locale() -> Locale:
    """Return the current page's Locale: Flask-Babel parses a code it is given on every
    request (some 3 µs), and takes a Locale as it is."""
    return _locale(select_locale())


@lru_cache(maxsize=64)
def _locale(code: str) -> Locale:
    return Locale.parse(code)


def _gettext(message: str) -> str:
    return get_translations().ugettext(message)


def _ngettext(singular: str, plural: str, number: int) -> str:
    return get_translations().ungettext(singular, plural, number)


def _pgettext(message_context: str, message: str) -> str:
    return get_translations().upgettext(message_context, message)


def _npgettext(message_context: str, singular: str, plural: str, number: int) -> str:
    return get_translations().unpgettext(message_context, singular, plural, number)


@pass_context
def _dateformat(context, value, format: str = "medium") -> str:
    """Flask-Babel's `dateformat` filter, with the language looked up once per render.

    Dates are shown in UTC, the portal's BABEL_DEFAULT_TIMEZONE.
    """
    if isinstance(value, datetime):
        value = (value.astimezone(UTC) if value.tzinfo is not None else value).date()
    return _formatted_date(value, format, context.get("_language") or language() or "en")


@lru_cache(maxsize=4096)
def _formatted_date(value: date, format: str, code: str) -> str:
    # The same few dates recur on every page (a consent given on launch day, say), and Babel
    # reads its pattern and the month's name afresh each time. Kept by the language's code:
    # comparing Babel's Locale objects as keys costs more than formatting a cached date.
    return format_date(value, format, locale=code)


def init_app(app) -> None:
    """Bind Flask-Babel with the portal's translations and locale choice."""
    babel.init_app(app, locale_selector=_selected_locale)
    app.jinja_env.add_extension(CompileTimeGettext)
    app.jinja_env.filters["dateformat"] = _dateformat
    app.jinja_env.globals["_translated"] = _translated
    # What CompileTimeGettext leaves for run time (plural forms, mostly in the back office).
    app.jinja_env.install_gettext_callables(
        gettext=_gettext, ngettext=_ngettext, pgettext=_pgettext, npgettext=_npgettext,
        newstyle=True,
    )
    app.context_processor(_template_context)


def _template_context() -> dict:
    max_age = current_app.config["PORTAL_LINK_MAX_AGE"]
    return {
        "_language": language(),
        "current_locale": lambda: language() or "en",
        # How long a preference link lives, as told to contacts.
        "link_days": max_age["manage"] // 86400,
        "confirm_hours": max_age["confirm"] // 3600,
        "undo_hours": max_age["undo"] // 3600,
    }
