"""The way back in (B1): "email me a fresh link", from the front page or a dead link's page.

The answer is the same whether the address is known, unknown, suppressed or rate-limited, so
the form reveals nothing about who is on file (SECURITY.md 12).
"""

from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_babel import force_locale
from flask_babel import gettext as _
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError
from wtforms import EmailField
from wtforms.validators import DataRequired
from wtforms.validators import Length
from wtforms.validators import ValidationError

from portal import contacts
from portal import csrf
from portal import outbox
from portal import suppression
from portal.db import db
from portal.gate import Category
from portal.hardening import quietly_allowed_for
from portal.links import manage_url
from portal.preferences import bp

PER_ADDRESS = "3 per hour"
PER_IP = "20 per hour"


class FreshLinkForm(FlaskForm):
    email = EmailField(validators=[DataRequired(), Length(max=254)])

    def validate_email(self, field):
        try:
            contacts.normalise_email(field.data)
        except contacts.InvalidEmail:
            raise ValidationError("malformed") from None


def send_fresh_link(address: str, client_ip: str) -> None:
    """Queue a fresh preference link to a known, mailable address; otherwise do nothing."""
    try:
        normalised = contacts.normalise_email(address)
    except contacts.InvalidEmail:
        return
    allowed = quietly_allowed_for(
        "fresh-link", normalised, client_ip, per_ip=PER_IP, per_address=PER_ADDRESS
    )
    if not allowed or suppression.is_suppressed(normalised):
        return
    contact = contacts.find_by_email(normalised)
    if contact is None or contact.erased_at is not None:
        return
    context = {"name": contact.first_name, "url": manage_url(contact)}
    with force_locale(contact.language or "en"):
        outbox.enqueue(
            category=Category.OWN_ACTION, contact=contact, recipient=contact.email,
            subject=_("Your link to your privacy preferences"),
            text_body=render_template("mail/preference_link.txt", **context),
            html_body=render_template("mail/preference_link.html", **context),
        )


@bp.post("/link")
@csrf.exempt  # checked below, so that a failed check keeps the typed address
def fresh_link():
    """Email a fresh link if the address is on file; answer the same in every case."""
    form = FreshLinkForm()
    try:
        csrf.protect()
    except CSRFError:
        # No session cookie, a missing token, an old page or a rotated key: the form again, the
        # address kept, nothing sent. Nothing here depends on the address, so this answer
        # tells nobody whether it is on file.
        return render_template("preferences/fresh_link.html", form=form, resubmit=True), 400
    if not form.validate_on_submit():
        return render_template("preferences/fresh_link.html", form=form), 200
    send_fresh_link(form.email.data, request.remote_addr)
    db.session.commit()
    return redirect(url_for("preferences.fresh_link_sent"), code=303)


@bp.get("/link")
def fresh_link_form():
    """Show the form that emails a fresh link."""
    return render_template("preferences/fresh_link.html", form=FreshLinkForm())


@bp.get("/link/sent")
def fresh_link_sent():
    """Say what happens next, the same for every address."""
    return render_template("preferences/fresh_link_sent.html")
