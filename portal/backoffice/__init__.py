"""The staff back office: sign-in, and the pages for each area (one module per area)."""

import re
from functools import wraps

import sqlalchemy as sa
from flask import Blueprint
from flask import abort
from flask import make_response
from flask import request
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from wtforms import SelectField

from portal.contact_filters import has_control_characters
from portal.contacts import Contact
from portal.db import db
from portal.staff import login_manager

bp = Blueprint("backoffice", __name__, url_prefix="/staff")

#: Endpoints anyone may open: everything else needs a signed-in staff member.
PUBLIC_ENDPOINTS = {"backoffice.sign_in"}


@bp.before_request
def require_sign_in():
    if request.endpoint not in PUBLIC_ENDPOINTS and not current_user.is_authenticated:
        return login_manager.unauthorized()
    return None


@bp.context_processor
def staff_member():
    return {"current_user": current_user._get_current_object()}


@bp.after_request
def never_cache(response):
    # Staff pages show personal data: no shared or browser cache may keep them.
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def staff_actor() -> str:
    """Name the signed-in staff member as the actor of a change: by id, never by address."""
    return f"staff:{current_user.id}"


def contact_or_404(public_id: str) -> Contact:
    """Return the contact a back-office URL names, or answer 404."""
    # PostgreSQL refuses a NUL byte in a query parameter: such an id is simply unknown.
    if len(public_id) > 32 or has_control_characters(public_id):
        abort(404)
    contact = db.session.scalar(sa.select(Contact).where(Contact.public_id == public_id))
    if contact is None:
        abort(404)
    return contact


#: The framed document's start, up to and with its doctype if it has one.
DOCUMENT_START = re.compile(r"\A\s*(?:<!doctype[^>]*>)?", re.IGNORECASE)
#: Made the first element of a frame whose sandbox lets popups out: its links open in a new
#: top-level tab, never in the frame, where the portal's pages refuse to load
#: (frame-ancestors 'none'). A link with target _blank has no opener (rel=noopener).
NEW_TAB_BASE = '<base target="_blank">'


def framed(html: str | None, policy: str, *, new_tab: bool = False):
    """Answer with the HTML a back-office page shows in a frame, under its own sandboxing
    Content-Security-Policy; 404 when there is none.

    With `new_tab` (a mail's HTML, whose policy's sandbox lets popups out of it), the
    document's links open in a new tab; otherwise (the settings' preview, no working link) it
    is left as it is.
    """
    if html is None:
        abort(404)
    if new_tab:
        start = DOCUMENT_START.match(html).end()
        html = html[:start] + NEW_TAB_BASE + html[start:]
    response = make_response(html)
    response.headers["Content-Security-Policy"] = policy
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response


#: What a select or radio field says of a value it does not offer (a stale or made-up form).
NOT_OFFERED = _l("Choose one of the offered values.")


class OfferedChoices:
    """Mixed into a form: its select and radio fields answer a value they do not offer with
    NOT_OFFERED, beside the field, in place of WTForms' "Not a valid choice." or "Invalid
    Choice: could not coerce."."""

    class Meta:
        def bind_field(self, form, unbound_field, options):
            if issubclass(unbound_field.field_class, SelectField):
                messages = ("invalid_choice_message", "invalid_value_message")
                options = {
                    **{name: NOT_OFFERED for name in messages if name not in unbound_field.kwargs},
                    **options,
                }
            return super().bind_field(form, unbound_field, options)


def role_required(*roles: str):
    """Refuse the view with 403 unless the signed-in staff member has one of these roles."""

    def decorator(view):
        @wraps(view)
        def wrapped(*args, **kwargs):
            if current_user.role not in roles:
                abort(403)
            return view(*args, **kwargs)

        return wrapped

    return decorator


# The areas register their views on bp when imported.
from portal.backoffice import auth  # noqa: E402,F401
from portal.backoffice import campaigns  # noqa: E402,F401
from portal.backoffice import contacts  # noqa: E402,F401
from portal.backoffice import erasure  # noqa: E402,F401
from portal.backoffice import forms  # noqa: E402,F401
from portal.backoffice import jobs  # noqa: E402,F401
from portal.backoffice import mail  # noqa: E402,F401
from portal.backoffice import optin  # noqa: E402,F401
from portal.backoffice import settings  # noqa: E402,F401
