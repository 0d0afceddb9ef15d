"""The unsubscribe link of campaign mail (M7, N5, SECURITY.md 2).

A mail client's one-click button POSTs to it (RFC 8058): no cookie, no CSRF token, no Origin.
That POST takes the contact off that one list at once, commits, and answers 200 with a short
page: no redirect, no cookie. A person (or a mail scanner) who opens a link with GET changes
nothing. The mail body's link, while fresh and not revoked, lands on the preference page with
that list highlighted and its one button (N5); any other unsubscribe link (the header's, or an
old body link) lands on a page with one button that leaves that list, and shows nothing else
of the contact (M7: the token can do nothing but unsubscribe).
"""

from contextlib import contextmanager

from flask import current_app
from flask import g
from flask import redirect
from flask import render_template
from flask import url_for

from portal import csrf
from portal import lists
from portal import unsubscribe
from portal import unsubscribe_lane
from portal.db import db
from portal.i18n import language
from portal.links import TokenInvalid
from portal.links import make_token
from portal.preferences import _evidence
from portal.preferences import bp
from portal.preferences import refused


@contextmanager
def _bad_link_unless_valid(token: str):
    """Answer a TokenInvalid raised inside with the bad-link page (404), logged by a digest."""
    try:
        yield
    except TokenInvalid as error:
        raise refused("unsubscribe", token, str(error)) from None


@bp.get("/o/<token>")
def unsubscribe_page(token: str):
    """Land on the preference page with the link's list highlighted, or on its one button."""
    with _bad_link_unless_valid(token):
        contact, mailing_list, opens_page = unsubscribe.read_landing(token)
    g.contact_language = contact.language
    if opens_page:
        # The body link outlives a page link's age: a fresh page link is made here.
        target = url_for(
            "preferences.manage", token=make_token("manage", contact), list=mailing_list.slug
        )
        return redirect(target, code=303)
    subscribed = db.session.get(lists.Subscription, (contact.id, mailing_list.id))
    return render_template(
        "preferences/leave.html",
        list_name=mailing_list.wording(language())[0],
        subscribed=subscribed is not None and subscribed.status == "subscribed",
        one_click=unsubscribe.make_token(contact, mailing_list),
    )


@bp.post("/o/<token>")
@csrf.exempt  # RFC 8058: the mail client's POST carries no token; this link can only unsubscribe
def one_click(token: str):
    """Leave the link's list at once and say so, with no redirect and no cookie."""
    with _bad_link_unless_valid(token):
        public_id, list_id = unsubscribe.token_ids(token)
    evidence = _evidence()
    left = unsubscribe_lane.leave(public_id, list_id, evidence)
    if left is not None:
        g.contact_language = left.language
        return _unsubscribed_page(left.mailing_list.wording(language())[0])
    # Anything but the common case (see unsubscribe_lane): the full path, in the session.
    with _bad_link_unless_valid(token):
        contact, mailing_list = unsubscribe.named(public_id, list_id)
    g.contact_language = contact.language
    unsubscribe.unsubscribe(contact, mailing_list, evidence=evidence)
    # Read before the commit expires it: reading it after would open a second transaction
    # (on SQLite one that takes the write lock again) just to show the list's name.
    list_name = mailing_list.wording(language())[0]
    # Committed before answering: a mail client takes the 200 as "done".
    db.session.commit()
    return _unsubscribed_page(list_name)


#: How many answers (one per language and list name) each app keeps rendered.
PAGES_KEPT = 256


def _unsubscribed_page(list_name: str) -> str:
    """Return the answer to a one-click POST: the same page for every POST that left a list of
    this name in this language, so it is rendered once (a campaign's POSTs come in bursts)."""
    pages = current_app.extensions.setdefault("unsubscribed_pages", {})
    key = (language(), list_name)
    page = pages.get(key)
    if page is None:
        if len(pages) >= PAGES_KEPT:
            pages.clear()
        page = pages[key] = render_template("preferences/unsubscribed.html", list_name=list_name)
    return page
