"""The preview: a contact's preference page exactly as they would see it, forms disabled.

The frame renders the real page's template through the real page's functions (``page_for``
and the page's context), for a contact on file or one typed in (a contact held in memory
only, never saved).
It is served with a sandbox that allows no script and no form, and carries no working link:
the page's token is a placeholder, so nothing can be submitted as the contact.
"""

from flask import g
from flask import render_template
from flask import request
from flask_babel import gettext as _
from flask_babel import refresh

from portal import catalogue
from portal.backoffice import bp
from portal.backoffice import framed
from portal.backoffice import role_required
from portal.backoffice.settings.forms import PreviewForm
from portal.choices import page_for
from portal.preferences import manage_context
from portal.preview import PREVIEW_COLUMNS
from portal.preview import find_contact
from portal.preview import transient_contact

#: What stands where the page's token would be: not a token, so every action on it fails.
PREVIEW_TOKEN = "preview"

# No script, no form submission, no navigation; only the portal's own stylesheet loads.
FRAME_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'none'; "
    "base-uri 'none'; frame-ancestors 'self'; sandbox"
)


def _preview_contact(form: PreviewForm):
    """Return the contact to preview and how to name it, or (None, error message)."""
    if form.contact.data:
        contact = find_contact(form.contact.data)
        if contact is None or contact.erased_at is not None:
            return None, _("No contact has this email address or public id.")
        # Named as staff know them, by address (the public id is the links' business).
        named = contact.email or contact.display_name or contact.public_id
        return contact, _("the contact %(ref)s", ref=named)
    typed = {name: form[name].data for name in PREVIEW_COLUMNS if name in form}
    typed.update(
        {
            field.name: request.args.get(f"attr-{field.name}", "").strip()[:200]
            for field in catalogue.rule_fields()
            if not field.builtin
        }
    )
    return transient_contact(typed), _("a contact with the values typed in")


def _shown(form: PreviewForm, show):
    """Return show(contact, described) for the chosen contact, or None if unknown."""
    contact, described = _preview_contact(form)
    if contact is None:
        form.contact.errors = [described]
        return None
    return show(contact, described)


def _form() -> PreviewForm:
    return PreviewForm(request.args)


@bp.get("/settings/preview")
@role_required("admin")
def settings_preview():
    """Choose a contact, or type attribute values, and see their page in a marked frame."""
    form = _form()
    custom = [field for field in catalogue.rule_fields() if not field.builtin]
    context = {"form": form, "custom": custom, "typed": request.args}
    if request.args and form.validate():
        context.update(_shown(form, _summary) or {})
    return render_template("backoffice/settings/preview.html", **context)


def _summary(contact, described) -> dict:
    # What the preview page says of the contact's page, in the staff member's language.
    page = page_for(contact)
    return {
        "page": page,
        "described": described,
        "frame_query": request.query_string.decode(),
        "consent_titles": [choice.version.title for choice in page.consents],
    }


@bp.get("/settings/preview/page")
@role_required("admin")
def settings_preview_page():
    """Render the contact's page itself, for the preview's frame."""
    form = _form()
    return framed(_shown(form, _render_manage) if form.validate() else None, FRAME_POLICY)


def _render_manage(contact, _described) -> str:
    # As on the real page: the contact's own language first. The form has already asked for
    # the staff member's language, so the choice is made again before the page is read (its
    # consents', lists' and policy's wording are in that language).
    g.contact_language = contact.language
    refresh()
    return render_template("preferences/manage.html",
                           **manage_context(PREVIEW_TOKEN, page_for(contact)))
