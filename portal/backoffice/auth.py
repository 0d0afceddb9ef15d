"""Signing staff in and out, and the back office's home page."""

from urllib.parse import unquote
from urllib.parse import urlsplit

from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import session
from flask import url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from flask_login import login_user
from flask_login import logout_user
from flask_wtf import FlaskForm
from wtforms import EmailField
from wtforms import PasswordField
from wtforms.validators import DataRequired
from wtforms.validators import Length

from portal import jobs
from portal import outbox
from portal import overview
from portal.backoffice import bp
from portal.db import db
from portal.hardening import limiter
from portal.staff import authenticate


class SignInForm(FlaskForm):
    email = EmailField(_l("Email"), validators=[DataRequired(), Length(max=254)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=200)])


def _address_key() -> str:
    return "sign-in:" + (request.form.get("email") or "").strip().lower()[:254]


def _safe_next(target: str | None) -> str:
    """Return where to go after signing in: the back-office page `next` names, else the
    overview."""
    home = url_for("backoffice.home")  # the back office's prefix, after any script root
    if not target or "\\" in target or any(c < " " or c == "\x7f" for c in target):
        # Browsers read a backslash as a slash. Werkzeug drops a tab when it writes the
        # Location header ("/\t/evil.example" became "//evil.example", another host) and refuses
        # a line break (a 500 after the password was right).
        return home
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith(home):
        return home
    # "/staff/../x" (or %2e%2e) would climb out of the back office once the browser resolves it.
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        return home
    return target


@bp.route("/sign-in", methods=["GET", "POST"])
@limiter.limit("10 per minute", methods=["POST"])
@limiter.limit("20 per hour", methods=["POST"], key_func=_address_key)
def sign_in():
    """Sign a staff member in with email and password."""
    form = SignInForm()
    if form.validate_on_submit():
        user = authenticate(form.email.data, form.password.data)
        db.session.commit()  # keep the failure count even when the answer is "no"
        if user is not None:
            next_url = _safe_next(request.args.get("next"))
            session.clear()  # a new session at sign-in
            login_user(user)
            return redirect(next_url, code=303)
        # One answer for an unknown address, a wrong password and a locked account.
        form.password.errors.append(_("The email or the password is not right, or the account "
                                      "is locked for a while. Try again later."))
    return render_template("backoffice/sign_in.html", form=form)


@bp.post("/sign-out")
def sign_out():
    """Sign the staff member out."""
    logout_user()
    session.clear()
    flash(_("You are signed out."))
    return redirect(url_for("backoffice.sign_in"), code=303)


@bp.get("/")
def home():
    """Show the back office's overview: what needs attention, and where each task lives."""
    counts = outbox.status_counts()
    return render_template("backoffice/home.html", user=current_user, outbox_counts=counts,
                           jobs=jobs.recent(5), attention=overview.attention())
