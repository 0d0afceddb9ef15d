"""The staff back office: sign-in, and the pages for each area (one module per area)."""

from functools import wraps

from flask import Blueprint
from flask import abort
from flask import request
from flask_login import current_user

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
