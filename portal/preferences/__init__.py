"""The contact-facing pages: the front page, the preference page, confirming and undoing.

Every link in an email opens a page with one button; only its POST acts, so a mail scanner's
GET changes nothing and uses up nothing (R1).
"""

import logging
from functools import lru_cache

from flask import Blueprint
from flask import flash
from flask import g
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFError

from portal import changes
from portal import csrf
from portal import htmx
from portal import page_lane
from portal.choices import CONSENT
from portal.choices import ERASURE
from portal.choices import LIST
from portal.choices import MARKETING
from portal.choices import RESTRICTION
from portal.choices import page_for
from portal.contacts import OptIn
from portal.db import READ_ONLY_BLUEPRINTS
from portal.db import db
from portal.db import reading_only_from_here
from portal.db import whole_number
from portal.hardening import answer_headers
from portal.i18n import language
from portal.ledger import Evidence
from portal.links import TokenExpired
from portal.links import TokenInvalid
from portal.links import check_form_token
from portal.links import contact_of
from portal.links import form_token
from portal.links import make_token
from portal.links import read_payload
from portal.links import token_digest

log = logging.getLogger(__name__)
bp = Blueprint("preferences", __name__)
# Its GET views never write (R1): on PostgreSQL they read without a transaction.
READ_ONLY_BLUEPRINTS.add(bp.name)

OPT_IN_WORDS = {
    OptIn.NONE: _l("You have not told us whether you want marketing email."),
    OptIn.SINGLE_USER: _l("You agreed to marketing email when you spoke to us."),
    OptIn.SINGLE_WEBFORM: _l(
        "You asked for marketing email on a web form and have not confirmed it yet."
    ),
    OptIn.DOUBLE: _l("You asked for marketing email and confirmed your address."),
    OptIn.OPTOUT_USER: _l("You asked us to stop sending you marketing email."),
    OptIn.OPTOUT_CONTACT: _l("You stopped all marketing email."),
}

#: How a consent decision was made (ConsentState.method), in the contact's words: the page says
#: "Given on <date>, <how>." A method not listed here shows the date alone.
CONSENT_METHOD_WORDS = {
    "page": _l("on this page"),
    "page+email": _l("on this page, confirmed by email"),
    "undo+email": _l("restored with the undo link we emailed you"),
    "webform": _l("on a sign-up form on our website"),
    "staff": _l("recorded by our staff"),
    "cli": _l("recorded by our staff"),
    "import": _l("imported from our earlier records"),
    "api": _l("through our CRM"),
}


# The forms of link pages carry a token bound to the contact, not to a session (links.form_token).
bp.add_app_template_global(form_token, "link_form_token")


#: Link pages carry a token in their URL: never cache them, never index them, and never send
#: the URL to another site (same-origin keeps the Referer for CSRF checks).
TOKEN_PAGE_HEADERS = (
    ("Cache-Control", "no-store"), ("X-Robots-Tag", "noindex"), ("Referrer-Policy", "same-origin"),
)


@bp.after_request
def protect_token_pages(response):
    answer_headers(TOKEN_PAGE_HEADERS)
    return response


class BadLink(Exception):
    def __init__(self, expired: bool):
        self.expired = expired


@bp.errorhandler(BadLink)
def bad_link(error: BadLink):
    template = render_template("preferences/link_invalid.html", expired=error.expired)
    return template, 410 if error.expired else 404


def refused(purpose: str, token: str, reason: str, *, expired: bool = False) -> BadLink:
    """Log a refused link by a digest of its token, never the token; return the BadLink."""
    log.info("refused %s link %s: %s", purpose, token_digest(token), reason)
    return BadLink(expired=expired)


def _payload_of(purpose: str, token: str) -> dict:
    """Return the payload of a link whose signature and age hold, or raise BadLink."""
    try:
        return read_payload(purpose, token)
    except TokenInvalid as error:
        raise refused(purpose, token, str(error), expired=isinstance(error, TokenExpired)) from None


def _contact_of(purpose: str, token: str, payload: dict):
    """Return the contact a link's payload names, or raise BadLink if it no longer opens it."""
    contact = contact_of(payload)
    if contact is None:
        raise refused(purpose, token, "the link was revoked")
    g.contact_language = contact.language
    return contact


def _contact_from(purpose: str, token: str):
    """Return the contact and payload of a link, or raise BadLink (logging a digest only)."""
    payload = _payload_of(purpose, token)
    return _contact_of(purpose, token, payload), payload


def _posted_contact(purpose: str, token: str):
    """Return what _contact_from does, for a form's POST whose form token is checked too.

    The views posting to a link are exempt from Flask-WTF's check, tied to a session: their
    forms carry a token bound to the contact instead (links.form_token). The link is read first,
    so a bad link gets the bad-link page rather than "please review and resubmit".
    """
    contact, payload = _contact_from(purpose, token)
    check_form_token(contact, request.form.get("csrf_token"))
    return contact, payload


def _evidence() -> Evidence:
    return Evidence(ip_address=request.remote_addr, user_agent=request.user_agent.string or None)


def _submitted(page) -> tuple[dict, dict]:
    """Read the form into {(kind, reference): value} and the consent versions shown."""
    form = request.form
    choices = {(LIST, item.slug): form.get(f"list:{item.slug}") == "on" for item in page.lists}
    choices[(MARKETING, "")] = form.get("stop_marketing") != "on"
    versions = {}
    for choice in page.consents:
        slug = choice.definition.slug
        answer = form.get(f"consent:{slug}")
        if answer in ("yes", "no"):
            choices[(CONSENT, slug)] = answer == "yes"
        # A version the form does not spell as a number is unknown, as if missing: the text
        # shown is then taken to be the one this page shows now, its current version.
        shown = whole_number(form.get(f"version:{slug}"))
        versions[slug] = choice.version.number if shown is None else shown
    # Stopping processing and erasure are one-way from here: lifting them is for staff.
    if page.full and form.get("stop_processing") == "on":
        choices[(RESTRICTION, "")] = True
    if page.full and form.get("erasure") == "on":
        choices[(ERASURE, "")] = True
    return choices, versions


def _shown_rule_version() -> int | None:
    # None (unreadable or missing) records the rules' current version (changes.submit).
    return whole_number(request.form.get("rule_version"))


@bp.get("/")
def front():
    """Show what the portal is and how a contact reaches their own page."""
    return render_template("preferences/front.html")


@lru_cache(maxsize=16)
def _words(language: str) -> tuple[dict, dict]:
    """Return OPT_IN_WORDS and CONSENT_METHOD_WORDS translated into the current language.

    Called with the current language's name, so each language's words are translated once per
    process rather than through Flask-Babel each time a page shows them.
    """
    return ({status: str(text) for status, text in OPT_IN_WORDS.items()},
            {method: str(text) for method, text in CONSENT_METHOD_WORDS.items()})


def manage_context(token: str, page, wanted: dict | None = None) -> dict:
    """Return what preferences/manage.html needs: the real page and the staff preview share it."""
    contact = page.contact
    opt_in_words, method_words = _words(language())
    return {"token": token, "page": page, "contact": contact,
            "positions": page.positions(wanted),
            "opt_in_words": opt_in_words[OptIn(contact.opt_in_status)],
            "method_words": method_words,
            "highlight": request.args.get("list")}


@bp.get("/p/<token>")
def manage(token: str):
    """Show a contact their email options, the policy, their consents and their rights."""
    page = _page_of(token, _payload_of("manage", token))
    return render_template("preferences/manage.html", **manage_context(token, page))


def _page_of(token: str, payload: dict, contact=None):
    """Return the page of the contact a checked manage link names: most often read by the page
    lane, in two statements on the driver's cursor (on SQLite without the write lock, as the
    htmx save's answer needs it after its commit); else through the session, for the contact
    given or the one the link opens (BadLink if none)."""
    found = page_lane.read(payload)
    if found is None:
        return page_for(contact or _contact_of("manage", token, payload))
    g.contact_language = found.contact.language  # before the page asks for the language
    return found.page()


@bp.post("/p/<token>")
@csrf.exempt  # the link's form token is checked inside, to keep the contact's choices
def save(token: str):
    """Apply withdrawals at once and mail a confirmation link for everything else.

    Without JavaScript this ends in a redirect to the page; with htmx it answers with the
    updated form. A toggle saves the withdrawals only (see _toggled).
    """
    contact, payload = _contact_from("manage", token)
    page = page_for(contact)
    choices, versions = _submitted(page)
    toggled = _toggled()
    try:
        check_form_token(contact, request.form.get("csrf_token"))
    except CSRFError:
        # An expired form or a rotated key: show the page again with the contact's choices
        # still set, so nothing they chose is lost.
        context = manage_context(token, page, wanted=choices)
        note = [_("Please review and resubmit: this form had expired, so nothing was saved "
                  "yet. Your choices are still set below.")]
        return htmx.render("preferences/manage.html", "preferences/_form.html",
                           messages=note, **context)
    # A "no" or an unticked box is a withdrawal; grants, stopping processing and erasure are
    # all True, and a toggle leaves them for the button.
    sent = {key: value for key, value in choices.items() if not value} if toggled else choices
    try:
        outcome = changes.submit(contact, sent, versions=versions,
                                 stamp=request.form.get("stamp", ""),
                                 language=str(get_locale()), evidence=_evidence(),
                                 rule_version=_shown_rule_version(), page=page)
    except changes.StaleForm as stale:
        db.session.rollback()
        # Everything the form asked for, the grants a toggle held back included.
        wanted = changes.describe(stale.page, changes.diff(stale.page, choices, {}))
        return htmx.render("preferences/stale.html", "preferences/_stale.html", token=token,
                           page=stale.page, wanted=wanted, now=changes.summary(stale.page))
    db.session.commit()
    reading_only_from_here()
    after = _page_of(token, payload, contact) if htmx.wants_fragment() else None
    messages = []
    if outcome.withdrawn:
        messages.append(_("Your changes are saved. We sent you an email with a link to undo "
                          "them."))
    if outcome.pending and outcome.withdrawn:
        messages.append(_("Check your inbox: we sent a link to confirm the rest of your "
                          "changes. Nothing else changes until you use it."))
    elif outcome.pending:
        messages.append(_("Check your inbox: we sent you a link to confirm your changes. "
                          "Nothing changes until you use it."))
    if toggled and _held_back(after, choices):
        messages.append(_("Anything you give or ask for is not sent yet: press “%(button)s” "
                          "and we will email you a link to confirm it.",
                          button=_("Save my choices")))
    if not messages:
        messages.append(_("Nothing changed."))
    if after is None:
        for message in messages:
            flash(message)
        return redirect(url_for("preferences.manage", token=token), code=303)
    # After a toggle the form comes back as the contact left it: what it held back stays set.
    context = manage_context(token, after, wanted=choices if toggled else None)
    return htmx.render("preferences/manage.html", "preferences/_form.html",
                       messages=messages, **context)


def _toggled() -> bool:
    """Say whether a withdrawal's control saved the form, rather than the contact's button.

    htmx posts the form when a control of class "saves-at-once" changes. The button is named
    "save", and both a browser's own submit (Enter included) and htmx 2's (it sends the button
    last clicked or focused in the form) carry it. Only a fragment can keep the contact's
    other choices set on the page, so a save without it is a toggle only when htmx asks for
    one.
    """
    return htmx.wants_fragment() and "save" not in request.form


def _held_back(page, choices: dict) -> bool:
    """Say whether the contact ticked something to give or ask for that waits for the button.

    A default's pre-ticked box is not the contact's doing, and a grant whose confirmation
    link is already on its way is not sent again.
    """
    shown = page.positions()
    return any(value and shown.get(key) is not True and key not in page.waiting
               for key, value in choices.items())


@bp.post("/p/<token>/leave/<slug>")
@csrf.exempt  # the link's own form token: _posted_contact
def leave(token: str, slug: str):
    """Leave one mailing list at once: the unsubscribe link's one button (N5)."""
    contact, _payload = _posted_contact("manage", token)
    record = changes.leave_list(contact, slug, language=str(get_locale()), evidence=_evidence())
    db.session.commit()
    if record is not None:
        flash(_("You left the list. We sent you an email with a link to undo it."))
    else:
        flash(_("You are not on that list."))
    return redirect(url_for("preferences.manage", token=token), code=303)


@bp.get("/c/<token>")
def confirm_page(token: str):
    """Show exactly what a confirmation will change, with one button."""
    contact, payload = _contact_from("confirm", token)
    change = changes.pending_of(contact, str(payload.get("p", "")))
    if change is None:
        raise refused("confirm", token, "it names no pending change of its contact")
    page = page_for(contact)
    return render_template("preferences/confirm.html", token=token, change=change, contact=contact,
                           items=changes.describe(page, change.changes()))


@bp.post("/c/<token>")
@csrf.exempt  # the link's own form token: _posted_contact
def confirm(token: str):
    """Apply the pending change, once."""
    contact, payload = _posted_contact("confirm", token)
    status, change = changes.confirm(contact, str(payload.get("p", "")), evidence=_evidence())
    if status == "unknown":
        raise refused("confirm", token, "it names no pending change of its contact")
    # Read before the commit expires them: after it, reading them would open a second
    # transaction (on SQLite one that takes the write lock again) only to show this answer.
    erasure = status == "applied" and changes.asks_erasure(change)
    manage_token = make_token("manage", contact)
    db.session.commit()
    return render_template("preferences/confirmed.html", status=status, erasure=erasure,
                           manage_token=manage_token)


@bp.get("/u/<token>")
def undo_page(token: str):
    """Show what an undo will restore, with one button."""
    contact, payload = _contact_from("undo", token)
    record = changes.undo_of(contact, str(payload.get("u", "")))
    if record is None:
        raise refused("undo", token, "it names no withdrawal of its contact")
    page = page_for(contact)
    return render_template("preferences/undo.html", token=token, record=record, contact=contact,
                           items=changes.describe(page, record.changes()))


@bp.post("/u/<token>")
@csrf.exempt  # the link's own form token: _posted_contact
def undo(token: str):
    """Restore what a withdrawal took away, once."""
    contact, payload = _posted_contact("undo", token)
    status, _record = changes.undo(contact, str(payload.get("u", "")), evidence=_evidence())
    if status == "unknown":
        raise refused("undo", token, "it names no withdrawal of its contact")
    manage_token = make_token("manage", contact)  # before the commit, as in confirm
    db.session.commit()
    return render_template("preferences/undone.html", status=status, manage_token=manage_token)


# The way back in registers its views on the same blueprint.
from portal.preferences import double_opt_in  # noqa: E402,F401
from portal.preferences import fresh_link  # noqa: E402,F401
from portal.preferences import one_click  # noqa: E402,F401
