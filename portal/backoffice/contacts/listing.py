"""The contact list: filters in the query string, saved filters, and the CSV export."""

from urllib.parse import urlencode

from flask import abort
from flask import flash
from flask import make_response
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_babel import gettext as _
from flask_login import current_user

from portal import contact_filters
from portal import export
from portal import htmx
from portal import jobs
from portal.backoffice import bp
from portal.backoffice import role_required
from portal.backoffice import staff_actor
from portal.contacts import OptIn
from portal.db import db
from portal.db import whole_number
from portal.optin import STATUS_WORDS

STAFF = ("admin", "agent")


def list_url(filters: contact_filters.Filters, page: int | None = None) -> str:
    """Return the list's URL for these filters (and page), to bookmark or to link."""
    args = filters.query_args() + ([("page", str(page))] if page and page > 1 else [])
    base = url_for("backoffice.contacts_list")
    return f"{base}?{urlencode(args)}" if args else base


def _page_number(value: str | None) -> tuple[int, str | None]:
    if value is None or value == "":
        return 1, None
    number = whole_number(value, maximum=99999)
    if number:
        return number, None
    return 1, _("“%(value)s” is not a page number; the first page is shown.", value=value[:20])


def _render_list(filters, errors, number=1, *, save_errors=None, saved_name=""):
    result = contact_filters.page(filters, number)
    context = dict(
        filters=filters,
        errors=errors,
        page=result,
        list_url=list_url,
        statuses=[(status, STATUS_WORDS[status]) for status in OptIn],
        consents=contact_filters.consent_choices(),
        mailing_lists=contact_filters.list_choices(),
        regions=contact_filters.regions(),
        saved=contact_filters.saved_filters(),
        save_errors=save_errors or {},
        saved_name=saved_name,
        status_words=STATUS_WORDS,
        # Another page replaces the links that were pressed: focus goes to the results' heading.
        focus_results=htmx.triggered_by("previous-page", "next-page"),
    )
    return htmx.render(
        "backoffice/contacts/list.html", "backoffice/contacts/_results.html", **context
    )


def _requested() -> str:
    return request.script_root + request.full_path.rstrip("?")


@bp.get("/contacts")
@role_required(*STAFF)
def contacts_list():
    """List the contacts that match the filters in the query string, a page at a time."""
    filters, errors = contact_filters.parse(request.args)
    number, page_error = _page_number(request.args.get("page"))
    if page_error:
        errors["page"] = page_error
    canonical = list_url(filters, number)
    if not errors and not htmx.wants_fragment() and _requested() != canonical:
        # One address per list: empty fields and their order do not make a new bookmark.
        return redirect(canonical)
    response = _render_list(filters, errors, number)
    if htmx.wants_fragment() and not errors:
        response.headers["HX-Push-Url"] = canonical
    return response


@bp.post("/contacts/filters")
@role_required(*STAFF)
def contacts_filter_save():
    """Save the current filters under a name."""
    filters, errors = contact_filters.parse_query_string(request.form.get("query", ""))
    name = request.form.get("name", "")
    if errors:
        return _render_list(
            filters,
            errors,
            save_errors={"name": _("Correct the filters marked below before saving them.")},
            saved_name=name,
        )
    try:
        saved = contact_filters.save(name, filters, created_by_id=current_user.id)
    except contact_filters.FilterError as error:
        return _render_list(filters, errors, save_errors={"name": str(error)}, saved_name=name)
    db.session.commit()
    flash(_("The filter “%(name)s” is saved. Open it again from “Saved filters”.", name=saved.name))
    return redirect(list_url(filters), code=303)


def _deletable_filter(filter_id: int) -> contact_filters.SavedFilter:
    saved = db.get_or_404(contact_filters.SavedFilter, filter_id)
    if saved.created_by_id not in (None, current_user.id) and not current_user.is_admin:
        abort(403)
    return saved


@bp.get("/contacts/filters/<row_id:filter_id>/delete")
@role_required(*STAFF)
def contacts_filter_confirm_delete(filter_id: int):
    """Ask before deleting a saved filter."""
    saved = _deletable_filter(filter_id)
    return render_template("backoffice/contacts/filter_delete.html", saved=saved)


@bp.post("/contacts/filters/<row_id:filter_id>/delete")
@role_required(*STAFF)
def contacts_filter_delete(filter_id: int):
    """Delete a saved filter (its author or an admin)."""
    saved = _deletable_filter(filter_id)
    db.session.delete(saved)
    db.session.commit()
    flash(_("The saved filter “%(name)s” is deleted.", name=saved.name))
    return redirect(url_for("backoffice.contacts_list"), code=303)


@bp.post("/contacts/export")
@role_required(*STAFF)
def contacts_export():
    """Start a CSV export of the filtered list as a job."""
    filters, errors = contact_filters.parse_query_string(request.form.get("query", ""))
    if errors:
        return _render_list(filters, errors)
    job = export.start(filters, created_by=staff_actor())
    db.session.commit()
    flash(
        _(
            "The export is queued. This page shows its progress; the file can be downloaded "
            "here when it is done."
        )
    )
    return redirect(url_for("backoffice.jobs_show", job_id=job.id), code=303)


@bp.get("/contacts/exports/<row_id:job_id>.csv")
@role_required(*STAFF)
def contacts_export_download(job_id: int):
    """Download a finished CSV export."""
    job = db.get_or_404(jobs.Job, job_id)
    if job.kind != export.EXPORT.name or job.status != "done":
        abort(404)
    # The byte order mark makes spreadsheets read the file as UTF-8 (names with accents).
    response = make_response("\ufeff" + export.csv_text(job))
    response.mimetype = "text/csv"
    response.headers["Content-Disposition"] = f'attachment; filename="contacts-{job.id}.csv"'
    return response
