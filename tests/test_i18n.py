"""Languages (B11): complete catalogues kept in step with the sources, and pages in the contact's
own language, then the browser's, then English."""

import re
from pathlib import Path

import pytest
from babel.messages.extract import DEFAULT_KEYWORDS
from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po
from markupsafe import Markup

from portal import contacts
from portal.db import db
from portal.links import make_token

ROOT = Path(__file__).resolve().parent.parent
TRANSLATIONS = ROOT / "portal" / "translations"
TEMPLATE = TRANSLATIONS / "messages.pot"
CATALOGUES = sorted(TRANSLATIONS.glob("*/LC_MESSAGES/messages.po"))
# The keywords `make extract-messages` passes: Babel's defaults (_, gettext, ...) plus _l.
KEYWORDS = {**DEFAULT_KEYWORDS, "_l": None}
# A printf-style placeholder such as %(name)s or %d, or a lone % that is none (Jinja's
# new-style gettext formats every message, so a stray % breaks the page).
PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(?:\d+|\*)?(?:\.\d+)?[diouxXeEfFgGcrsa%]|%")
# ngettext passes the count as %(num)d, which a singular form may spell out instead.
COUNT = "%(num)d"

FRONT_HEADING = "Manage how we contact you"
MANAGE_HEADING = "Your privacy preferences"


def _language(path: Path) -> str:
    return path.relative_to(TRANSLATIONS).parts[0]


def _read_po(path: Path):
    with path.open("rb") as f:
        return read_po(f)


def _keys(catalog) -> set:
    """Return the (context, msgid) of every current message of a catalogue, header left out."""
    return {(message.context, message.id) for message in catalog if message.id}


def _extract_sources() -> set:
    """Extract the marked strings from the sources as `make extract-messages` does."""
    with (ROOT / "babel.cfg").open() as f:
        method_map, options_map = parse_mapping_cfg(f)
    return {
        (context, message_id)
        for _file, _line, message_id, _comments, context in extract_from_dir(
            ROOT, method_map, options_map, keywords=KEYWORDS
        )
    }


def _describe(**groups) -> str:
    """List the message ids of each non-empty group under its name."""
    lines = []
    for name, keys in groups.items():
        if keys:
            lines.append(f"{name.replace('_', ' ')}:")
            lines += [f"  {message_id!r}" for _context, message_id in sorted(keys, key=str)]
    return "\n".join(lines)


def _placeholders(text: str, plural: bool) -> list[str]:
    found = sorted(PLACEHOLDER.findall(text))
    return [p for p in found if p != COUNT] if plural else found


def _problems(message) -> list[str]:
    """Return what is wrong with one translated message: empty, fuzzy, placeholders differ."""
    plural = isinstance(message.id, tuple)
    strings = message.string if plural else (message.string,)
    english = message.id[-1] if plural else message.id
    problems = []
    if message.fuzzy:
        problems.append("fuzzy")
    if not all(strings):
        problems.append("empty")
    expected = _placeholders(english, plural)
    for string in filter(None, strings):
        if _placeholders(string, plural) != expected:
            problems.append(f"placeholders {_placeholders(string, plural)} != {expected}")
    return problems


def _translated(language: str, english: str) -> str:
    """Return a catalogue's translation of an English message (English itself for "en")."""
    if language == "en":
        return english
    path = TRANSLATIONS / language / "LC_MESSAGES" / "messages.po"
    translation = _read_po(path)[english].string
    assert translation and translation != english, f"no {language} for {english!r}"
    return translation


def _german(english: str) -> str:
    """Return the German catalogue's translation of an English message."""
    return _translated("de", english)


def test_every_configured_language_has_a_catalogue(app):
    languages = {_language(path) for path in CATALOGUES}
    missing = set(app.config["PORTAL_LANGUAGES"]) - {"en"} - languages
    assert not missing, f"no catalogue under portal/translations for {sorted(missing)}"


@pytest.mark.parametrize("path", CATALOGUES, ids=_language)
def test_catalogue_is_complete(path):
    catalog = _read_po(path)
    assert not catalog.fuzzy, f"{path.relative_to(ROOT)}: the header is marked fuzzy"
    problems = [
        f"  {message.id!r}: {', '.join(found)}"
        for message in catalog
        if message.id and (found := _problems(message))
    ]
    assert not problems, f"{path.relative_to(ROOT)} needs work:\n" + "\n".join(problems)


def test_template_lists_exactly_the_marked_strings():
    in_sources = _extract_sources()
    in_template = _keys(_read_po(TEMPLATE))
    new = in_sources - in_template
    gone = in_template - in_sources
    assert not new and not gone, (
        "portal/translations/messages.pot is out of date: run `make extract-messages` and "
        "translate the new strings.\n" + _describe(new_in_the_sources=new, no_longer_used=gone)
    )


@pytest.mark.parametrize("path", CATALOGUES, ids=_language)
def test_catalogue_has_the_messages_of_the_template(path):
    in_template = _keys(_read_po(TEMPLATE))
    in_catalogue = _keys(_read_po(path))
    missing = in_template - in_catalogue
    extra = in_catalogue - in_template
    assert not missing and not extra, (
        f"{path.relative_to(ROOT)} is not merged with the template: run `make extract-messages`.\n"
        + _describe(missing=missing, not_in_the_template=extra)
    )


def _entry(message) -> tuple:
    """Return a message as a comparable tuple: plural ids and strings come as lists or tuples."""

    def plain(value):
        return tuple(value) if isinstance(value, list | tuple) else value

    return message.context, plain(message.id), plain(message.string)


@pytest.mark.parametrize("path", CATALOGUES, ids=_language)
def test_compiled_catalogue_matches_its_source(path):
    compiled = path.with_suffix(".mo")
    assert compiled.exists(), f"{compiled.relative_to(ROOT)} is missing: run `make translations`"
    with compiled.open("rb") as f:
        served = {_entry(m) for m in read_mo(f) if m.id}
    written = {_entry(m) for m in _read_po(path) if m.id and m.string}
    assert served == written, (
        f"{compiled.relative_to(ROOT)} is older than its .po file: run `make translations`"
    )


@pytest.mark.parametrize(
    ("accept_language", "language"),
    [
        (None, "en"),
        ("de", "de"),
        ("de-AT,de;q=0.9", "de"),
        ("fr-FR,fr;q=0.9,de;q=0.8,en;q=0.5", "fr"),
        ("fr-FR,ja;q=0.8", "fr"),
        ("ja-JP,en;q=0.5", "ja"),
        ("fr-CA,en;q=0.8", "fr"),
        ("de-DE,en-US;q=0.7,en;q=0.3", "de"),
        ("en;q=0.4,ja;q=0.9", "ja"),
        ("es-ES,pt;q=0.8", "en"),
        ("es-ES,pt;q=0.8,de;q=0.1", "de"),
    ],
)
def test_front_page_speaks_the_browsers_language(client, accept_language, language):
    headers = {"Accept-Language": accept_language} if accept_language else {}
    page = client.get("/", headers=headers).get_data(as_text=True)
    assert f'<html lang="{language}">' in page
    assert f"<h1>{_translated(language, FRONT_HEADING)}</h1>" in page


@pytest.mark.parametrize(
    ("contact_language", "accept_language", "language"),
    [("de", "en", "de"), ("en", "de", "en"), (None, "de", "de"), (None, "fr", "fr"),
     ("ja", "de", "ja"), (None, "es", "en")],
)
def test_preference_page_speaks_the_contacts_language_first(
    client, contact_language, accept_language, language
):
    contact = contacts.add_contact(
        "lena@example.com",
        first_name="Lena",
        language=contact_language,
        method="cli",
        actor="test",
    )
    db.session.commit()
    response = client.get(
        f"/p/{make_token('manage', contact)}", headers={"Accept-Language": accept_language}
    )
    page = response.get_data(as_text=True)
    assert response.status_code == 200
    assert f'<html lang="{language}">' in page
    assert f"<h1>{_translated(language, MANAGE_HEADING)}</h1>" in page


def test_the_page_language_follows_the_request_and_force_locale(app):
    from flask_babel import force_locale
    from flask_babel import get_locale

    from portal.i18n import language

    with app.test_request_context("/", headers={"Accept-Language": "fr"}):
        assert language() == "fr" == str(get_locale())
        with force_locale("ja"):
            assert language() == "ja"
            with force_locale("de"):
                assert language() == "de"
            assert language() == "ja"
        assert language() == "fr"


#: Strings of the catalogue as the templates use them: alone, with placeholders (values that
#: need escaping), inside a statement and a larger expression, and in a part of a template
#: that is not escaped.
COMPILED_SAMPLE = (
    '{{ _("Email") }}|{{ _("Hello %(name)s.", name=who) }}|'
    '{% set line = _("Given on %(date)s, %(how)s.", date=when, how=who) %}{{ line }}'
    '{{ _("Hello,") if when else none }}|'
    '{% autoescape false %}{{ _("Hello %(name)s.", name=who) }}{% endautoescape %}|'
    '{{ _("%(count)d locked records", count=count) }}'
)


@pytest.mark.parametrize("code", ["en", "de", "fr", "ja"])
def test_strings_translated_when_compiled_read_as_they_would_at_run_time(app, code):
    from flask_babel import force_locale
    from flask_babel import get_translations

    from portal.i18n import _compiling

    values = {"who": "<b>Zoë & co</b>", "when": "1 mars 2026", "count": 3}
    with app.test_request_context("/"), force_locale(code):
        compiling = _compiling.set(get_translations())
        try:
            source = app.jinja_env.compile(COMPILED_SAMPLE, raw=True)
            compiled = app.jinja_env.from_string(COMPILED_SAMPLE)
        finally:
            _compiling.reset(compiling)
        at_run_time = app.jinja_env.from_string(COMPILED_SAMPLE)
        assert "gettext" not in source and "_translated" in source
        shown = compiled.render(values)
        assert shown == at_run_time.render(values)
    escaped, _statement, raw, number = shown.split("|")[1:]
    assert "3" in number
    assert "&lt;b&gt;Zoë &amp; co&lt;/b&gt;" in escaped
    assert "<b>Zoë & co</b>" in raw
    if code != "en":
        assert "Hello" not in shown


@pytest.mark.parametrize("text, variables", [
    ("Hello %(name)s.", {"name": "<b>Zoë & co</b>"}),
    ("Hello %(name)s.", {"name": Markup("<b>kept</b>")}),
    ("Given on %(date)s, %(how)s.", {"date": "1. März", "how": "it's \"quoted\""}),
    ("%(count)d locked records, 100%% sure", {"count": 3}),
    ("%(share)s%% of %(count)d", {"share": "<50", "count": 7}),
    ("%(count)s records", {"count": 12}),
])
def test_a_translation_is_filled_as_new_style_gettext_fills_it(app, text, variables):
    from jinja2.nodes import EvalContext

    from portal.i18n import _translated

    escaped, plain = EvalContext(app.jinja_env), EvalContext(app.jinja_env)
    escaped.autoescape, plain.autoescape = True, False
    filled = _translated(escaped, text, **variables)
    assert filled == Markup(text) % variables and isinstance(filled, Markup)
    assert _translated(plain, text, **variables) == text % variables
