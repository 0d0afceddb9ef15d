"""What a campaign says: its subject and its two templates, checked, then rendered per contact.

Bodies are staff-written templates rendered in Jinja's sandbox, with plain values of the
contact only: a sensitive field is only ever seen masked (SECURITY.md 15). The HTML part is
sanitized after rendering, so whatever a template produces, only the allowed tags go out; with
the footer added, it goes out as a whole document in the contact's language, titled with the
subject.
"""

from contextlib import contextmanager

import jinja2
from flask import current_app
from jinja2 import meta

from portal import footer
from portal import sandbox
from portal import settings
from portal import tracking
from portal import unsubscribe
from portal.contacts import Contact
from portal.contacts import field_value
from portal.mail import MessageRejected
from portal.mail import check_header
from portal.mail import html_document

MAX_SUBJECT_LENGTH = 200
#: What a template may use: plain values of the contact, masked custom fields, one link.
PLACEHOLDERS = {
    "first_name": "the contact's first name",
    "last_name": "the contact's last name",
    "name": "first and last name",
    "email": "the contact's address",
    "region": "the contact's region",
    "language": "the contact's language",
    "fields": "custom fields by name, sensitive ones masked, e.g. {{ fields.sales_stage }}",
    "unsubscribe_url": "the link that leaves this list (its page; the preference page while fresh)",
}
#: What the trial renders at save time fill the placeholders with: sample values, then the
#: empty ones of a contact who gave nothing but an address (a template that divides by
#: `first_name|length` passes the first and fails the second).
SAMPLE = {name: "sample" for name in PLACEHOLDERS} | {"fields": {}}
EMPTY = {name: "" for name in PLACEHOLDERS} | {"fields": {}}


class CampaignError(ValueError):
    """A campaign cannot be saved or sent as it is; `field` names the culprit, if one."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class CampaignErrors(CampaignError):
    """Several fields are wrong at once: `errors` holds each one's CampaignError, so that a
    form can say every problem beside its field in one answer. It reads as the first."""

    def __init__(self, errors: list[CampaignError]):
        super().__init__(str(errors[0]), errors[0].field)
        self.errors = errors


@contextmanager
def collected(errors: list[CampaignError]):
    """Add the CampaignError (or each of the CampaignErrors) raised in the block to `errors`."""
    try:
        yield
    except CampaignErrors as several:
        errors.extend(several.errors)
    except CampaignError as error:
        errors.append(error)


def raise_all(errors: list[CampaignError]) -> None:
    """Raise nothing for no error, the error for one, CampaignErrors for several."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise CampaignErrors(errors)


class RenderError(CampaignError):
    """A template failed for one contact's values; `kind` names the error, never a value.

    The message says on which line, not what Python or Jinja said ("integer division or
    modulo by zero", "'str object' has no attribute 'x'"): those words are for developers.
    """

    def __init__(self, error: Exception, field: str):
        line = sandbox.line_of(error)
        where = f"line {line}" if line else "the template"
        if isinstance(error, sandbox.TemplateLimit):
            message = str(error)  # its own plain words: which budget it goes over
        elif isinstance(error, jinja2.UndefinedError):
            message = f"{where} uses a value that is not there"
        else:
            message = f"{where} fails"
        super().__init__(message, field)
        self.kind = type(error).__name__


# Two sandboxes: the text part is not HTML, the HTML part escapes every value it inserts. Each
# render keeps to the sandbox module's budget of size, steps and time.
_TEXT = sandbox.StaffSandbox(autoescape=False, keep_trailing_newline=True)
_HTML = sandbox.StaffSandbox(autoescape=True)
# Compiled templates by campaign and version: a 10,000-message campaign compiles them once.
_compiled: dict[tuple, tuple[jinja2.Template, jinja2.Template | None, frozenset[str]]] = {}


def parse(environment: sandbox.StaffSandbox, source: str, field: str) -> set[str]:
    """Return the names a template uses, or raise CampaignError for a syntax error."""
    try:
        names = meta.find_undeclared_variables(environment.parse(source))
    except jinja2.TemplateSyntaxError as error:
        # Jinja's own words ("Expected an expression, got 'end of statement block'") are for
        # developers.
        raise CampaignError(
            f"line {error.lineno}: a {{{{ … }}}} or {{% … %}} is incomplete, misspelt or never "
            "closed",
            field,
        ) from None
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        raise CampaignError(
            f"unknown placeholder {unknown[0]!r}; use {', '.join(sorted(PLACEHOLDERS))}", field
        )
    return names


def _try_render(environment: sandbox.StaffSandbox, source: str, field: str) -> None:
    """Raise CampaignError unless the template renders with sample values and with empty ones.

    This catches what only rendering finds, such as the sandbox refusing
    `{{ name.__class__ }}`, before anyone is sent anything. Values no trial can foresee are
    still possible: a failure then is that one contact's (see `render`).
    """
    template = environment.from_string(source)
    try:
        _render(template, SAMPLE, field)
    except RenderError as error:
        raise CampaignError(f"the template cannot be rendered: {error}", field) from None
    try:
        _render(template, EMPTY, field)
    except RenderError as error:
        raise CampaignError(
            "the template cannot be rendered for a contact whose values are empty "
            f"(no first name, say): {error}",
            field,
        ) from None


def _render(template: jinja2.Template, context: dict, field: str) -> str:
    try:
        return sandbox.render(template, context)
    except Exception as error:
        # The template is staff-written code run in the sandbox with plain strings: whatever
        # it raises (ZeroDivisionError, a SecurityError, a TemplateLimit...) is this render
        # failing, never the caller's bug, and must not stop a campaign or break a page.
        raise RenderError(error, field) from error


def check(subject: str, text_body: str, html_body: str) -> None:
    """Raise CampaignError, naming the field, unless subject and bodies can be sent; where
    several fields are wrong, a CampaignErrors with one error for each."""
    errors = []
    with collected(errors):
        _check_subject(subject)
    with collected(errors):
        _check_bodies(text_body, html_body)
    raise_all(errors)


def _check_subject(subject: str) -> None:
    if not subject.strip():
        raise CampaignError("write a subject", "subject")
    try:
        check_header("Subject", subject)
    except MessageRejected:
        raise CampaignError(
            "the subject must be one line, without line breaks", "subject"
        ) from None
    if len(subject) > MAX_SUBJECT_LENGTH:
        raise CampaignError(f"the subject has at most {MAX_SUBJECT_LENGTH} characters", "subject")


def _check_bodies(text_body: str, html_body: str) -> None:
    if not text_body.strip():
        raise CampaignError("write the text of the message", "text_body")
    for field, body in (("text_body", text_body), ("html_body", html_body)):
        if "\x00" in body:
            # Pasted from somewhere odd: no mail carries it, and PostgreSQL cannot store it.
            raise CampaignError("remove the invisible NUL character pasted into it", field)
    limit = current_app.config["PORTAL_MAX_BODY_BYTES"]
    if len(text_body.encode()) + len(html_body.encode()) > limit // 2:
        # Half the outbox's limit: each recipient's values and the footer are added to it.
        raise CampaignError(
            f"the text and HTML together are larger than {limit // 2} bytes", "text_body"
        )
    # Each body on its own: a problem in the text does not hide one in the HTML.
    errors = []
    for environment, body, field in ((_TEXT, text_body, "text_body"),
                                     (_HTML, html_body, "html_body")):
        with collected(errors):
            parse(environment, body, field)
            _try_render(environment, body, field)
    raise_all(errors)


def _templates(campaign):
    key = (campaign.id, campaign.updated_at, campaign.text_body, campaign.html_body)
    found = _compiled.get(key)
    if found is None:
        names = parse(_TEXT, campaign.text_body, "text_body")
        names |= parse(_HTML, campaign.html_body, "html_body")
        html = _HTML.from_string(campaign.html_body) if campaign.html_body.strip() else None
        found = (_TEXT.from_string(campaign.text_body), html, frozenset(names))
        if len(_compiled) > 50:
            _compiled.clear()
        _compiled[key] = found
    return found


def _context(campaign, contact: Contact, names: frozenset[str]) -> dict:
    """Return what a template sees: plain strings only, never a model or a decrypted value."""
    context = {
        "first_name": contact.first_name or "",
        "last_name": contact.last_name or "",
        "name": contact.display_name,
        "email": contact.email or "",
        "region": contact.region or "",
        "language": contact.language or "",
    }
    if "fields" in names:
        # field_value without reveal: a sensitive field's masked characters, never its value.
        context["fields"] = {
            value.field.name: field_value(contact, value.field.name) or ""
            for value in contact.values
        }
    if "unsubscribe_url" in names:
        context["unsubscribe_url"] = unsubscribe.visible_url(contact, campaign.mailing_list)
    return context


def render(
    campaign, contact: Contact, footer_source: str | None = None, *, track: bool = False
) -> tuple[str, str, str | None]:
    """Return the subject, text and HTML a contact would receive, footer included; raise
    RenderError if a template fails for this contact's values.

    `footer_source` is the footer setting, if the caller read the settings already. `track`
    (for a contact who granted tracking, when the message is queued) sends the HTML part's web
    links through the click redirect and adds the open pixel (P6); a preview never does. The
    HTML is a whole document (see mail.html_document), the same in a preview as in the mail.
    """
    text_template, html_template, names = _templates(campaign)
    context = _context(campaign, contact, names)
    text = _render(text_template, context, "text_body")
    html = None
    if html_template is not None:
        html = settings.sanitize_html(_render(html_template, context, "html_body"))
    if html is not None and track:
        html = tracking.instrument(html, contact, campaign.id)
    text, html = footer.add_footer(text, html, contact, footer_source)
    if html is not None:
        # The body is the staff's sanitized fragment and the footer: in the language the footer
        # is written in, the contact's.
        html = html_document(html, language=contact.language or "en", title=campaign.subject)
    return campaign.subject, text, html
