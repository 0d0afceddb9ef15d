"""The public web-form endpoint (M2) that a business embeds on its own site.

``POST /f/<list slug>`` signs an address up to that public list, plus any other public lists
named in ``list`` fields of the same form; ``marketing=yes`` is the "I want marketing email"
box. The form comes from another site, so it carries no CSRF token: it is exempt (R1), and
all it can do is start a double opt-in. ``GET /f/<list slug>`` is the same form hosted by the
portal; ``GET /demo/signup`` (demo only) is a sample page with the forms staff copy.
"""

from flask import Blueprint
from flask import abort
from flask import current_app
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_babel import get_locale
from flask_wtf import FlaskForm
from wtforms import BooleanField
from wtforms import EmailField
from wtforms import StringField
from wtforms.validators import DataRequired
from wtforms.validators import Length
from wtforms.validators import ValidationError

from portal import contacts
from portal import csrf
from portal import webforms
from portal.db import db
from portal.hardening import answer_headers
from portal.ledger import Evidence

bp = Blueprint("signup", __name__)


class SignupForm(FlaskForm):
    # Posted from the business's own site: there is no token to check (R1).
    class Meta:
        csrf = False

    email = EmailField(validators=[DataRequired(), Length(max=254)])
    first_name = StringField(validators=[Length(max=100)])
    marketing = BooleanField(false_values=("", "no", "false", "off"))
    website = StringField()  # the honeypot

    def validate_email(self, field):
        try:
            contacts.normalise_email(field.data)
        except contacts.InvalidEmail:
            raise ValidationError("malformed") from None

    def validate_first_name(self, field):
        if field.data and any(character in field.data for character in "\r\n\x00"):
            raise ValidationError("one line")


@bp.after_request
def never_cache(response):
    # Answers to a form post name nobody, but must never be cached or indexed.
    answer_headers((("Cache-Control", "no-store"), ("X-Robots-Tag", "noindex")))
    return response


def _lists_or_page(slug: str):
    """Return the lists a form names, or the response that says the form is out of date."""
    try:
        return webforms.find_lists([slug, *request.form.getlist("list")]), None
    except webforms.UnknownList:
        page = render_template("signup/unknown_list.html", lists=webforms.public_lists())
        return None, (page, 404)


@bp.get("/f/<slug>")
def form(slug: str):
    """Show the portal's own sign-up form for a public list."""
    mailing_lists, refusal = _lists_or_page(slug)
    if refusal:
        return refusal
    return render_template(
        "signup/form.html",
        form=SignupForm(formdata=None),
        mailing_list=mailing_lists[0],
        extra_lists=[],
    )


@bp.post("/f/<slug>")
@csrf.exempt
def submit(slug: str):
    """Sign an address up to public lists; answer the same whether or not it is on file."""
    mailing_lists, refusal = _lists_or_page(slug)
    if refusal:
        return refusal
    signup_form = SignupForm()
    if not signup_form.validate():
        return render_template(
            "signup/form.html",
            form=signup_form,
            mailing_list=mailing_lists[0],
            extra_lists=mailing_lists[1:],
        )
    if not signup_form.website.data:
        language = str(get_locale())
        webforms.queue(
            signup_form.email.data,
            mailing_lists,
            marketing=signup_form.marketing.data,
            client_ip=request.remote_addr,
            first_name=signup_form.first_name.data,
            language=language if language in current_app.config["PORTAL_LANGUAGES"] else None,
            evidence=Evidence(
                ip_address=request.remote_addr, user_agent=request.user_agent.string or None
            ),
        )
        db.session.commit()
    return redirect(url_for("signup.sent"), code=303)


@bp.get("/signup/sent")
def sent():
    """Tell the visitor to check their inbox, the same for every address."""
    return render_template("signup/sent.html")


@bp.get("/demo/signup")
def demo():
    """Show a sample business page with the sign-up forms staff copy (demo only)."""
    if not current_app.config["PORTAL_DEMO"]:
        abort(404)
    public = webforms.public_lists()
    return render_template(
        "signup/demo.html",
        lists=public,
        snippets={item.slug: webforms.snippet(item) for item in public},
    )
