"""The contact-facing pages: the front page and the preference page reached by a signed link."""

from flask import Blueprint
from flask import g
from flask import render_template
from flask_babel import lazy_gettext as _l

from portal import consent
from portal import lists
from portal import settings
from portal.contacts import OptIn
from portal.links import TokenExpired
from portal.links import TokenInvalid
from portal.links import read_token

bp = Blueprint("preferences", __name__)

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


@bp.after_request
def protect_token_pages(response):
    # Link pages carry a token in their URL: never cache them, never index them, and never
    # send the URL to another site (same-origin keeps the Referer for CSRF checks).
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


@bp.get("/")
def front():
    """Show what the portal is and how a contact reaches their own page."""
    return render_template("preferences/front.html")


@bp.get("/p/<token>")
def manage(token: str):
    """Show a contact their email options, subscriptions and consents."""
    try:
        contact, _payload = read_token("manage", token)
    except TokenExpired:
        return render_template("preferences/link_invalid.html", expired=True), 410
    except TokenInvalid:
        return render_template("preferences/link_invalid.html", expired=False), 404
    g.contact_language = contact.language
    page = settings.values()
    return render_template(
        "preferences/manage.html",
        contact=contact,
        opt_in_words=OPT_IN_WORDS[OptIn(contact.opt_in_status)],
        subscriptions=[s for s in lists.subscriptions_of(contact) if s.status == "subscribed"],
        states=consent.states_of(contact),
        policy_html=page["policy_html"],
    )
