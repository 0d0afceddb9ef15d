"""Locks and erasure in the back office: stop and lift processing, the erasure requests with
their deadlines, "Erase personal data" and "Delete record" (P7, P8, B5, B6)."""

from flask import flash
from flask import redirect
from flask import render_template
from flask import url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError
from wtforms import RadioField
from wtforms import SelectChoice
from wtforms import TextAreaField
from wtforms.validators import DataRequired
from wtforms.validators import Length

from portal import erasure
from portal import htmx
from portal import restriction
from portal.backoffice import OfferedChoices
from portal.backoffice import bp
from portal.backoffice import contact_or_404
from portal.backoffice import role_required
from portal.backoffice import staff_actor
from portal.contacts import Contact
from portal.contacts import RecordLocked
from portal.db import db


class ReasonForm(FlaskForm):
    reason = TextAreaField(
        _l("Reason"),
        validators=[DataRequired(_l("Give a reason.")), Length(max=restriction.MAX_REASON)],
    )


class ExtensionForm(OfferedChoices, FlaskForm):
    months = RadioField(
        _l("Extend by"),
        choices=[SelectChoice("1", _l("one month")), SelectChoice("2", _l("two months"))],
        default="1",
        validators=[DataRequired()],
    )
    reason = TextAreaField(
        _l("Reason, as the contact will read it"),
        validators=[
            DataRequired(_l("Give a reason: the contact is told why it takes longer.")),
            Length(max=erasure.MAX_REASON),
        ],
    )


class ConfirmForm(FlaskForm):
    """Only the CSRF token: the confirm page's button."""


def _back_to(contact: Contact):
    return redirect(url_for("backoffice.contact_show", public_id=contact.public_id), code=303)


@bp.context_processor
def record_helpers() -> dict:
    # The record view's lock and erasure partials read these; the view need not pass them.
    return {"erasure_request_of": erasure.request_of, "restriction_notes_of": restriction.notes_of}


@bp.errorhandler(RecordLocked)
def record_locked(error: RecordLocked):
    """Tell staff that the record is locked instead of failing the request."""
    message = _(
        "Processing of this contact's data is stopped: the record is locked and "
        "nothing was changed. An admin can lift the restriction, giving a reason."
    )
    db.session.rollback()
    if htmx.wants_fragment():
        # 200: htmx swaps no 4xx answer, and the message must show where the change was asked.
        return htmx.render(
            "backoffice/erasure/_locked.html", "backoffice/erasure/_locked.html", message=message
        )
    flash(message)
    return _back_to(error.contact)


@bp.route("/contacts/<public_id>/stop-processing", methods=["GET", "POST"])
@role_required("admin", "agent")
def stop_processing(public_id: str):
    """Stop the processing of a contact's data on their behalf, with a reason."""
    contact = contact_or_404(public_id)
    form = ReasonForm()
    if form.validate_on_submit():
        try:
            restriction.stop(contact, reason=form.reason.data, actor=staff_actor())
        except restriction.RestrictionError as error:
            form.reason.errors.append(str(error))
        else:
            db.session.commit()
            flash(
                _(
                    "Processing is stopped: the record is locked, the contact is opted out of "
                    "email, and a receipt is on its way to them."
                )
            )
            return _back_to(contact)
    return render_template("backoffice/erasure/stop_processing.html", contact=contact, form=form)


@bp.route("/contacts/<public_id>/lift-restriction", methods=["GET", "POST"])
@role_required("admin")
def lift_restriction(public_id: str):
    """Lift a stopped processing with a reason, mailing the contact first."""
    contact = contact_or_404(public_id)
    form = ReasonForm()
    if form.validate_on_submit():
        try:
            restriction.lift(contact, reason=form.reason.data, actor=staff_actor())
        except restriction.RestrictionError as error:
            form.reason.errors.append(str(error))
        else:
            db.session.commit()
            flash(
                _(
                    "The restriction is lifted; the contact was mailed first. They stay opted "
                    "out of marketing email until they opt in again."
                )
            )
            return _back_to(contact)
    return render_template("backoffice/erasure/lift_restriction.html", contact=contact, form=form)


@bp.get("/erasure")
@role_required("admin")
def erasure_list():
    """List the open erasure requests against their deadlines, and the erasure log."""
    return render_template(
        "backoffice/erasure/list.html",
        requests=erasure.requests(),
        log=erasure.log_entries(),
    )


@bp.route("/erasure/<public_id>/extend", methods=["GET", "POST"])
@role_required("admin")
def erasure_extend(public_id: str):
    """Extend an erasure request's deadline, telling the contact why."""
    contact = contact_or_404(public_id)
    request_ = erasure.request_of(contact)
    if request_ is None:
        flash(_("This contact has no open erasure request."))
        return redirect(url_for("backoffice.erasure_list"), code=303)
    form = ExtensionForm()
    if form.validate_on_submit():
        try:
            erasure.extend(
                contact, months=int(form.months.data), reason=form.reason.data, actor=staff_actor()
            )
        except erasure.ErasureError as error:
            form.reason.errors.append(str(error))
        else:
            db.session.commit()
            flash(_("The deadline is extended and the contact was told why."))
            return redirect(url_for("backoffice.erasure_list"), code=303)
    return render_template(
        "backoffice/erasure/extend.html", contact=contact, request_=request_, form=form
    )


def _already_erased(contact: Contact):
    flash(
        _(
            "This contact's personal data was already erased on %(date)s. Nothing was changed.",
            date=contact.erased_at.date().isoformat(),
        )
    )
    return _back_to(contact)


#: Two admins erasing or deleting the same record at once: the second one's write fails.
RACES = (StaleDataError, IntegrityError, erasure.AlreadyErased)


def _changed_meanwhile():
    db.session.rollback()
    flash(
        _(
            "Someone changed or erased this record at the same moment; nothing of yours was "
            "done. Look at the record as it is now before trying again."
        )
    )
    return redirect(url_for("backoffice.erasure_list"), code=303)


@bp.route("/contacts/<public_id>/erase", methods=["GET", "POST"])
@role_required("admin")
def erase(public_id: str):
    """Ask for confirmation, then erase the contact's personal data."""
    contact = contact_or_404(public_id)
    if contact.erased_at is not None:
        return _already_erased(contact)
    form = ConfirmForm()
    if form.validate_on_submit():
        try:
            log = erasure.erase(contact, actor=staff_actor())
            db.session.commit()
        except RACES:
            return _changed_meanwhile()
        flash(
            _(
                "The personal data of %(identity)s is erased. A receipt is on its way to the "
                "old address; the erasure log says what was kept and why.",
                identity=log.masked_identity,
            )
        )
        return _back_to(contact)
    return render_template(
        "backoffice/erasure/erase.html",
        contact=contact,
        form=form,
        kept=[
            erasure.KEPT[key]
            for key in ("ledger", "suppression", "non_personal", "message_history")
        ],
    )


@bp.route("/contacts/<public_id>/delete", methods=["GET", "POST"])
@role_required("admin")
def delete(public_id: str):
    """Ask for confirmation, then delete the whole record, leaving a tombstone."""
    contact = contact_or_404(public_id)
    form = ConfirmForm()
    if form.validate_on_submit():
        try:
            log = erasure.delete(contact, actor=staff_actor())
            db.session.commit()
        except RACES:
            return _changed_meanwhile()
        flash(
            _(
                "The record of %(identity)s is deleted. Its suppression and its ledger history "
                "remain.",
                identity=log.masked_identity,
            )
        )
        return redirect(url_for("backoffice.erasure_list"), code=303)
    return render_template("backoffice/erasure/delete.html", contact=contact, form=form)
