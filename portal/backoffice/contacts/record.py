"""One contact's record: its fields, Consents block, subscriptions and mail; edits and reveals."""

from flask import abort
from flask import current_app
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_babel import gettext as _
from flask_login import current_user

from portal import contact_records
from portal import ledger
from portal import lists
from portal import tracking
from portal.backoffice import bp
from portal.backoffice import contact_or_404
from portal.backoffice import role_required
from portal.backoffice import staff_actor
from portal.backoffice.contacts.listing import STAFF
from portal.contact_filters import has_control_characters
from portal.contacts import Contact
from portal.contacts import ContactError
from portal.contacts import field_definition
from portal.db import db
from portal.db import whole_number
from portal.optin import STATUS_WORDS


def _render_show(contact: Contact, *, revealed=None, field_errors=None, status=200):
    events = ledger.history(contact.public_id)
    page = render_template(
        "backoffice/contacts/show.html",
        contact=contact,
        fields=contact_records.field_rows(contact, current_user),
        consents=contact_records.consent_rows(contact, events),
        subscriptions=lists.subscriptions_of(contact),
        messages=contact_records.messages_to(contact),
        engagement=tracking.summary(contact),
        events=events,
        revealed=revealed or {},
        field_errors=field_errors or {},
        status_words=STATUS_WORDS,
    )
    return page, status


@bp.get("/contacts/<public_id>")
@role_required(*STAFF)
def contact_show(public_id: str):
    """Show one contact's record."""
    return _render_show(contact_or_404(public_id))


@bp.post("/contacts/<public_id>/reveal/<field_name>")
@role_required(*STAFF)
def contact_reveal(public_id: str, field_name: str):
    """Reveal one sensitive value once, recording the reveal in the ledger."""
    contact = contact_or_404(public_id)
    definition = None if has_control_characters(field_name) else field_definition(field_name)
    if definition is None:
        abort(404)
    evidence = ledger.Evidence(
        ip_address=request.remote_addr, user_agent=(request.user_agent.string or "")[:500] or None
    )
    try:
        value = contact_records.reveal(contact, definition, current_user, evidence=evidence)
    except PermissionError:
        abort(403)
    except contact_records.RevealRefused as error:
        return _render_show(contact, field_errors={field_name: str(error)})
    db.session.commit()
    return _render_show(contact, revealed={field_name: value})


def _saved_now(contact: Contact, fields, values: dict) -> dict[str, str]:
    """Return what the record holds now in each field where that is not what was typed."""
    builtin = (*contact_records.TEXT_FIELDS, "language", "kind")
    held = {name: getattr(contact, name) or "" for name in builtin}
    # A sensitive value is never shown: its box's hint shows the stored mask already.
    held.update({row.definition.name: row.value or "" for row in fields
                 if not row.definition.sensitive})
    return {name: value for name, value in held.items()
            if name in values and values[name].split() != value.split()}


def _render_edit(contact: Contact, *, values=None, errors=None, email_value=None, stale=False):
    fields = contact_records.field_rows(contact, current_user)
    return render_template(
        "backoffice/contacts/edit.html",
        contact=contact,
        fields=fields,
        values=values,
        errors=errors or {},
        email_value=email_value,
        stale=stale,
        # A stale form keeps what was typed: beside it, what someone else saved meanwhile.
        saved_now=_saved_now(contact, fields, values) if stale else {},
        languages=current_app.config["PORTAL_LANGUAGES"],
    )


@bp.get("/contacts/<public_id>/edit")
@role_required(*STAFF)
def contact_edit(public_id: str):
    """Show the form that edits a contact's fields and address."""
    return _render_edit(contact_or_404(public_id))


def _version(value: str | None) -> int:
    number = whole_number(value)
    return -1 if number is None else number


@bp.post("/contacts/<public_id>/edit")
@role_required(*STAFF)
def contact_update(public_id: str):
    """Save the edited fields of a contact."""
    contact = contact_or_404(public_id)
    values = request.form.to_dict()
    try:
        errors = contact_records.update_fields(
            contact,
            values,
            version=_version(values.get("version")),
            languages=current_app.config["PORTAL_LANGUAGES"],
            actor=staff_actor(),
        )
    except contact_records.StaleRecord:
        # The form comes back with the record's new version, so that saving it again works.
        return _render_edit(contact, values=values, stale=True)
    except ContactError as error:
        return _render_edit(contact, values=values, errors={"record": str(error)})
    if errors:
        db.session.rollback()
        return _render_edit(contact, values=values, errors=errors)
    db.session.commit()
    flash(_("The record is saved."))
    return redirect(url_for("backoffice.contact_show", public_id=contact.public_id), code=303)


@bp.post("/contacts/<public_id>/email")
@role_required(*STAFF)
def contact_change_email(public_id: str):
    """Give a contact a new email address."""
    contact = contact_or_404(public_id)
    address = request.form.get("email", "")
    try:
        contact_records.change_email(contact, address, actor=staff_actor())
    except ContactError as error:
        db.session.rollback()
        return _render_edit(contact, errors={"email": str(error)}, email_value=address[:254])
    db.session.commit()
    flash(
        _(
            "The address is changed. Links mailed to the old address no longer work. A single "
            "or double opt-in is back to None until the new address is confirmed."
        )
    )
    return redirect(url_for("backoffice.contact_show", public_id=contact.public_id), code=303)
