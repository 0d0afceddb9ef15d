"""The way back in (B1): "email me a fresh link", from the front page or a dead link's page.

The answer is the same whether the address is known, unknown, suppressed or rate-limited, and
so is the work behind it (the outbox worker composes the mail: portal/link_requests.py), so
the form reveals nothing about who is on file (SECURITY.md 12), not even by its timing.
"""

from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError
from wtforms import EmailField
from wtforms.validators import DataRequired
from wtforms.validators import Length
from wtforms.validators import ValidationError

from portal import contacts
from portal import csrf
from portal import link_requests
from portal.db import db
from portal.hardening import quietly_allowed_for
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
    """Ask the outbox worker for a fresh link to an address, doing the same work whether it
    is on file, suppressed or over its limits (link_requests says why)."""
    try:
        normalised = contacts.normalise_email(address)
    except contacts.InvalidEmail:
        return
    allowed = quietly_allowed_for(
        "fresh-link", normalised, client_ip, per_ip=PER_IP, per_address=PER_ADDRESS
    )
    link_requests.ask(normalised, allowed=allowed)


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
