"""The email footer (N4): staff-written, sanitized, rendered in Jinja's sandbox for each contact.

Staff write the footer as HTML in the settings (sanitized with nh3 when saved). It is a
template: ``{{ preferences_url }}`` is the contact's own preference link, ``{{ first_name }}``,
``{{ last_name }}`` and ``{{ name }}`` their name, and ``{{ fields.<name> }}`` a custom field,
masked when sensitive (SECURITY.md 15). Whatever staff write, the preference link is in every
footer: a footer that leaves it out, or fails to render, gets the default line added.

A contact whose erasure is requested or done has no page to go to, and mail about an erasure
must not put back what it removes: their footer is impersonal, the business's own text with no
preference link, name or field (a link written around ``{{ preferences_url }}`` keeps its text
only; ``{% if preferences_url %}`` leaves it out). With no footer of staff's own, it is empty.
"""

import html
import logging
import re
from html.parser import HTMLParser

from flask_babel import force_locale
from flask_babel import gettext as _
from jinja2 import Template
from jinja2 import TemplateSyntaxError
from jinja2 import UndefinedError
from jinja2 import nodes
from markupsafe import Markup
from markupsafe import escape

from portal import sandbox
from portal import settings
from portal.contacts import Contact
from portal.contacts import field_value
from portal.links import manage_url

log = logging.getLogger(__name__)

SEPARATOR = "-- "  # the signature separator mail clients recognise (RFC 3676)

# Within the sandbox module's budget of size, steps and time, like a campaign's bodies.
_environment = sandbox.StaffSandbox(autoescape=True)
# Compiled footers by source: a campaign compiles the footer once, not once per contact.
_compiled: dict[str, Template] = {}


def _template(source: str) -> Template:
    found = _compiled.get(source)
    if found is None:
        found = _environment.from_string(source)
        if len(_compiled) > 20:
            _compiled.clear()
        _compiled[source] = found
    return found


#: What would bring in another template: a footer has none to use (no loader).
_OTHER_TEMPLATES = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)

#: A link left without its address (an impersonal footer's preference link), as nh3 writes it.
_EMPTY_LINK = re.compile(r'<a(?: href="")?(?: rel="[^"]*")?>(.*?)</a>', re.S)


def _context(contact: Contact, url: str) -> dict:
    """Return what a footer template may use: the link and masked values only."""
    fields = {value.field.name: field_value(contact, value.field.name) for value in contact.values}
    return {
        "preferences_url": url,
        "first_name": contact.first_name or "",
        "last_name": contact.last_name or "",
        "name": contact.display_name,
        "fields": fields,
    }


#: What an impersonal footer's template sees: nothing of the contact.
_IMPERSONAL = {"preferences_url": "", "first_name": "", "last_name": "", "name": "", "fields": {}}

#: What a footer is tried with before it is saved: sample values, then none at all.
_TRIALS = (
    {
        "preferences_url": "https://portal.example/p/sample",
        "first_name": "Sample",
        "last_name": "Contact",
        "name": "Sample Contact",
        "fields": {},
    },
    _IMPERSONAL,
)


def problem(source: str) -> str | None:
    """Say why a footer staff are about to save cannot render, or return None if it can.

    Mail never waits for a broken footer (it gets the default line instead), so this is what
    tells staff, at the settings form, that theirs would not be used.
    """
    if not source.strip():
        return None
    # Jinja's and Python's own texts ("Expected an expression, got 'end of statement block'",
    # "ZeroDivisionError") are for developers: staff are told what is wrong, and on which line.
    try:
        template = _template(source)
        other = next(_environment.parse(source).find_all(_OTHER_TEMPLATES), None)
        if other is not None:
            return _(
                "A footer cannot use other templates: remove the include, extends or import on "
                "line %(line)s.",
                line=other.lineno,
            )
        for context in _TRIALS:
            sandbox.render(template, context)
    except sandbox.TemplateLimit as error:
        return _("The footer cannot be rendered: %(error)s", error=str(error))
    except TemplateSyntaxError as error:
        return _(
            "The footer is not a valid template: on line %(line)s, a {{ … }} or {%% … %%} is "
            "incomplete, misspelt or never closed.",
            line=error.lineno or 1,
        )
    except UndefinedError as error:
        return _(
            "The footer cannot be rendered: line %(line)s uses a value a footer does not have. "
            "It may use %(names)s.",
            line=sandbox.line_of(error) or 1,
            names="preferences_url, first_name, last_name, name, fields.<name>",
        )
    except Exception as error:
        # Whatever else the sandboxed template raises (a division by zero, a SecurityError,
        # a RecursionError) is its failure.
        return _(
            "The footer cannot be rendered: line %(line)s fails with a sample contact's values.",
            line=sandbox.line_of(error) or 1,
        )
    return None


def has_page(contact: Contact) -> bool:
    """Say whether a footer may link to the contact's page: not once erasure is asked for."""
    return contact.erasure_requested_at is None and contact.erased_at is None


class _TextWriter(HTMLParser):
    """Turn the footer's small HTML (the settings' allowed tags) into plain text."""

    BREAKS = {"p", "br", "li", "h2", "h3", "ul", "ol"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.links: list[str | None] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.BREAKS:
            self.parts.append("\n")
        if tag == "li":
            self.parts.append("- ")
        if tag == "a":
            self.links.append(dict(attrs).get("href"))

    def handle_endtag(self, tag):
        if tag == "a" and self.links:
            href = self.links.pop()
            text = "".join(self.parts).rstrip()
            if href and not text.endswith(href):
                self.parts.append(f" <{href}>")
        elif tag in self.BREAKS:
            self.parts.append("\n")

    def handle_data(self, data):
        self.parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).splitlines())
        return "\n".join(line for line in lines if line)


def html_to_text(fragment: str) -> str:
    """Return the plain-text reading of a small HTML fragment, links written out."""
    writer = _TextWriter()
    writer.feed(fragment)
    writer.close()
    return writer.text()


def _default_html(url: str) -> str:
    link = Markup('<a href="{0}">{0}</a>').format(url)
    return str(
        Markup("<p>{}</p>").format(escape(_("Your email preferences: %(link)s")) % {"link": link})
    )


def render(
    contact: Contact, source: str | None = None, *, personal: bool = True
) -> tuple[str, str]:
    """Return the footer for this contact as (text, html); `source` is the footer setting,
    if the caller read it already. `personal=False`, or a contact without a page, gives the
    impersonal footer (see the module's docstring)."""
    if source is None:
        source = settings.values()["footer_html"]
    with force_locale(contact.language or "en"):
        return _render(contact, source or "", personal and has_page(contact))


def _render(contact: Contact, source: str, personal: bool) -> tuple[str, str]:
    url = manage_url(contact) if personal else ""
    rendered = ""
    if source.strip():
        try:
            context = _context(contact, url) if personal else _IMPERSONAL
            rendered = sandbox.render(_template(source), context)
        except Exception as error:
            # A footer staff saved but that cannot render must not stop the mail going out:
            # whatever the sandboxed template raises (a RecursionError too) is its failure.
            log.warning(
                "the email footer does not render (%s); the default is used", type(error).__name__
            )
            rendered = ""
        # The output is sanitized again: the template may have assembled tags from pieces.
        rendered = settings.sanitize_html(rendered)
    if not personal:
        rendered = _EMPTY_LINK.sub(r"\1", rendered)
    elif url not in html.unescape(rendered):
        rendered += _default_html(url)
    return html_to_text(rendered), rendered


def add_footer(
    text: str,
    html_body: str | None,
    contact: Contact,
    source: str | None = None,
    *,
    personal: bool = True,
) -> tuple[str, str | None]:
    """Return the text and HTML parts of a mail with the contact's footer appended to each
    (unchanged if an impersonal footer comes out empty)."""
    footer_text, footer_html = render(contact, source, personal=personal)
    if not footer_text.strip():
        return text, html_body
    text = f"{text.rstrip()}\n\n{SEPARATOR}\n{footer_text}\n"
    if html_body is not None:
        block = f'<div class="footer">{footer_html}</div>'
        if "</body>" in html_body:
            html_body = html_body.replace("</body>", block + "</body>", 1)
        else:
            html_body = html_body + block
    return text, html_body
