"""The double opt-in link's page (M2, R1): GET shows one button, only its POST confirms.

A mail scanner that opens the link (GET or HEAD) changes nothing and uses up nothing.
"""

from flask import render_template
from flask import request

from portal import csrf
from portal import doi
from portal.db import db
from portal.links import check_form_token
from portal.links import make_token
from portal.preferences import _contact_from
from portal.preferences import _evidence
from portal.preferences import bp
from portal.preferences import refused


def _request_for(token: str):
    contact, payload = _contact_from("doi", token)
    doi_request = doi.request_of(contact, str(payload.get("d", "")))
    if doi_request is None:
        raise refused("doi", token, "it names no double opt-in request of its contact")
    if doi_request.status == "expired":
        raise refused("doi", token, "its double opt-in request has expired", expired=True)
    return contact, doi_request


@bp.get("/d/<token>")
def doi_page(token: str):
    """Show what confirming means, with one button."""
    contact, doi_request = _request_for(token)
    return render_template(
        "preferences/doi_confirm.html", token=token, doi_request=doi_request, contact=contact
    )


@bp.post("/d/<token>")
@csrf.exempt  # the link's own form token, checked below
def doi_confirm(token: str):
    """Set Double opt-in, once, and thank the contact."""
    contact, doi_request = _request_for(token)
    check_form_token(contact, request.form.get("csrf_token"))
    status, _row = doi.confirm(contact, doi_request.public_id, evidence=_evidence())
    if status in ("unknown", "expired"):
        raise refused("doi", token, f"its double opt-in request is {status}",
                      expired=status == "expired")
    # Made before the commit expires the contact: after it, a second transaction (on SQLite
    # one that takes the write lock again) would be opened only to show this answer.
    manage_token = make_token("manage", contact)
    db.session.commit()
    return render_template("preferences/doi_confirmed.html", status=status,
                           manage_token=manage_token)
