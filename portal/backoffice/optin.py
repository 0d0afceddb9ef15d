"""Opt-in status in the back office: staff transitions, double opt-in mail, out-of-band proof.

Every action is a POST that ends in a 303 back to the contact's record with a flashed message.
"""

import sqlalchemy as sa
from flask import abort
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_babel import gettext as _

from portal import doi
from portal import jobs
from portal import optin
from portal.backoffice import bp
from portal.backoffice import contact_or_404
from portal.backoffice import role_required
from portal.backoffice import staff_actor
from portal.contacts import Contact
from portal.contacts import ContactError
from portal.db import db
from portal.db import whole_number
from portal.ledger import Evidence
from portal.lists import MailingList

STAFF = ("agent", "admin")
#: Events by the path segment of their form's action.
STAFF_EVENT_PATHS = {event.value: event for event in optin.STAFF_EVENTS}


@bp.context_processor
def optin_helpers():
    return {
        "optin_staff_events": optin.staff_events,
        "optin_status_words": optin.STATUS_WORDS,
        "optin_status_meanings": optin.STATUS_MEANINGS,
        "optin_event_words": optin.EVENT_WORDS,
        "optin_notes_of": optin.notes_of,
        "optin_out_of_band_refusal": optin.out_of_band_refusal,
        "optin_restored_by_revert": optin.restored_by_revert,
        "optin_latest_request": doi.latest_request,
    }


def _evidence() -> Evidence:
    return Evidence(
        ip_address=request.remote_addr, user_agent=(request.user_agent.string or "")[:500] or None
    )


def _back_to(contact: Contact):
    return redirect(
        url_for("backoffice.contact_show", public_id=contact.public_id) + "#opt-in", code=303
    )


def _refused(contact: Contact, error: Exception):
    db.session.rollback()
    flash(_("Nothing changed: %(why)s.", why=getattr(error, "reason", str(error))))
    return _back_to(contact)


@bp.post("/contacts/<public_id>/opt-in/<event>")
@role_required(*STAFF)
def optin_transition(public_id: str, event: str):
    """Apply one staff transition of the opt-in status, with its reason."""
    contact = contact_or_404(public_id)
    if event not in STAFF_EVENT_PATHS:
        abort(404)
    try:
        after = optin.transition(
            contact,
            STAFF_EVENT_PATHS[event],
            actor=staff_actor(),
            method="staff",
            reason=request.form.get("reason", ""),
            evidence=_evidence(),
        )
    except (optin.TransitionRefused, ContactError) as error:
        return _refused(contact, error)
    db.session.commit()
    flash(_("The opt-in status is now: %(status)s.", status=optin.STATUS_WORDS[after]))
    return _back_to(contact)


@bp.post("/contacts/<public_id>/double-opt-in")
@role_required(*STAFF)
def optin_send_doi(public_id: str):
    """Send the double opt-in email to one contact."""
    contact = contact_or_404(public_id)
    result = doi.send_request(contact, source="staff", actor=staff_actor())
    db.session.commit()
    flash(result.message)
    return _back_to(contact)


@bp.post("/contacts/<public_id>/out-of-band")
@role_required(*STAFF)
def optin_out_of_band(public_id: str):
    """Record an opt-in confirmed out of band, with its evidence (B8)."""
    contact = contact_or_404(public_id)
    try:
        optin.record_out_of_band(
            contact,
            evidence_text=request.form.get("evidence", ""),
            actor=staff_actor(),
            evidence=_evidence(),
        )
    except (optin.TransitionRefused, ContactError) as error:
        return _refused(contact, error)
    db.session.commit()
    flash(_("Double opt-in recorded, with its evidence."))
    return _back_to(contact)


def _render_lists(error: str | None = None):
    mailing_lists = db.session.scalars(sa.select(MailingList).order_by(MailingList.name))
    recent = [job for job in jobs.recent(50) if job.kind == doi.SEND_LIST.name][:10]
    return render_template(
        "backoffice/double_opt_in.html", lists=list(mailing_lists), recent=recent, error=error
    )


@bp.get("/double-opt-in")
@role_required(*STAFF)
def doi_lists():
    """Show the form that sends the double opt-in email to a whole list, and recent runs."""
    return _render_lists()


@bp.post("/double-opt-in")
@role_required(*STAFF)
def doi_start():
    """Start the job that sends the double opt-in email to every member of a list."""
    chosen = whole_number(request.form.get("list_id"))
    mailing_list = None if chosen is None else db.session.get(MailingList, chosen)
    if mailing_list is None:
        return _render_lists(error=_("Choose one of the lists."))
    job = doi.start_list_job(mailing_list, actor=staff_actor())
    db.session.commit()
    flash(
        _(
            "Sending to %(name)s is queued. This page shows its progress; opted-out contacts "
            "are skipped and counted.",
            name=mailing_list.name,
        )
    )
    return redirect(url_for("backoffice.jobs_show", job_id=job.id), code=303)
