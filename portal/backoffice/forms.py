"""Web forms in the back office: the sign-up snippet to copy for each public list (M2)."""

from flask import render_template

from portal import webforms
from portal.backoffice import bp
from portal.backoffice import role_required


@bp.get("/forms")
@role_required("agent", "admin")
def forms():
    """Show the HTML sign-up form to copy onto a website, for each public list."""
    public = webforms.public_lists()
    return render_template(
        "backoffice/forms.html",
        lists=public,
        snippets={item.slug: webforms.snippet(item) for item in public},
    )
