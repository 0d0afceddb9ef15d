"""Consents and mailing lists in the settings area: create, edit, retire, each edit logged."""

from flask import current_app
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_babel import gettext as _

from portal import catalogue
from portal.backoffice import bp
from portal.backoffice import role_required
from portal.backoffice.settings import author
from portal.backoffice.settings import render_count
from portal.backoffice.settings import rule_count
from portal.backoffice.settings import staff_names
from portal.backoffice.settings.forms import EditConsentForm
from portal.backoffice.settings.forms import ListForm
from portal.backoffice.settings.forms import NewConsentForm
from portal.backoffice.settings.forms import RetireForm
from portal.backoffice.settings.forms import options
from portal.backoffice.settings.forms import prepare_rule
from portal.backoffice.settings.forms import rule_data
from portal.backoffice.settings.forms import rule_from
from portal.choices import forget_catalogue
from portal.consent import ConsentDefinition
from portal.consent import ConsentError
from portal.contacts import FieldDefinition
from portal.db import db
from portal.lists import ListError
from portal.lists import MailingList


def _sensitive_fields() -> list[FieldDefinition]:
    return list(
        db.session.scalars(
            db.select(FieldDefinition)
            .where(FieldDefinition.sensitive)
            .order_by(FieldDefinition.name)
        )
    )


def _languages() -> list[str]:
    """The languages of the contact's page: a consent's wording may be given in each."""
    return list(current_app.config["PORTAL_LANGUAGES"])


def _done(message: str):
    db.session.commit()
    forget_catalogue()
    flash(message)
    return redirect(url_for("backoffice.settings_edit"), code=303)


@bp.route("/settings/consents/new", methods=["GET", "POST"])
@role_required("admin")
def consent_new():
    """Define a new consent with its first wording, condition and default."""
    form = NewConsentForm()
    form.prepare_wordings(_languages())
    fields = _sensitive_fields()
    form.field.choices = options({"": "—", **{str(f.id): f.label for f in fields}})
    prepare_rule(form.condition.form, [f.name for f in catalogue.rule_fields()])
    context = {"form": form, "counts": {}}
    if request.method == "GET":
        return render_template("backoffice/settings/consent_new.html", **context)
    if request.form.get("count") == "condition":
        context["counts"] = {"condition": rule_count(form.condition.form)}
        return render_count("backoffice/settings/consent_new.html", "condition", **context)
    valid = form.validate()
    wordings = form.wordings_for(_languages())
    condition, rule_valid = rule_from(form.condition.form)
    field = next((f for f in fields if str(f.id) == form.field.data), None)
    if form.kind.data == "storage" and field is None:
        form.field.errors = [_("Choose the sensitive field this consent covers.")]
        valid = False
    if not (valid and rule_valid and wordings is not None):
        return render_template("backoffice/settings/consent_new.html", **context)
    try:
        definition = catalogue.add_consent(
            form.kind.data,
            form.title.data,
            form.text.data,
            field=field if form.kind.data == "storage" else None,
            display_condition=condition,
            default_selected=form.default_selected.data,
            author=author(),
            translations=wordings,
        )
    except ConsentError as error:
        db.session.rollback()
        form.title.errors = [str(error)]
        return render_template("backoffice/settings/consent_new.html", **context)
    return _done(_("The consent “%(title)s” is added.", title=definition.current_version.title))


@bp.route("/settings/consents/<row_id:consent_id>", methods=["GET", "POST"])
@role_required("admin")
def consent_edit(consent_id: int):
    """Change a consent: a new wording is saved as a new version, the old ones kept."""
    definition = db.get_or_404(ConsentDefinition, consent_id)
    if request.method == "POST":
        form = EditConsentForm()
    else:
        version = definition.current_version
        form = EditConsentForm(
            data={
                "title": version.title,
                "text": version.text,
                "condition": rule_data(definition.display_condition),
                "default_selected": definition.default_selected,
                "based_on": catalogue.last_edit("consent", definition.id),
            }
        )
    form.prepare_wordings(_languages(), definition.current_version.translations)
    prepare_rule(form.condition.form, [f.name for f in catalogue.rule_fields()])
    context = {
        "form": form,
        "definition": definition,
        "counts": {},
        "edits": catalogue.edits("consent", definition.id),
    }
    context["names"] = staff_names([edit.created_by for edit in context["edits"]])
    if request.method == "GET":
        return render_template("backoffice/settings/consent_edit.html", **context)
    if request.form.get("count") == "condition":
        context["counts"] = {"condition": rule_count(form.condition.form)}
        return render_count("backoffice/settings/consent_edit.html", "condition", **context)
    valid = form.validate()
    wordings = form.wordings_for(_languages(), definition.current_version.translations)
    condition, rule_valid = rule_from(form.condition.form)
    if definition.retired_at is not None:
        flash(_("This consent is retired: it can no longer be changed."))
        return redirect(url_for("backoffice.consent_edit", consent_id=definition.id), code=303)
    if not (valid and rule_valid and wordings is not None):
        return render_template("backoffice/settings/consent_edit.html", **context)
    try:
        edit = catalogue.edit_consent(
            definition,
            title=form.title.data,
            text=form.text.data,
            translations=wordings,
            material=form.material.data,
            display_condition=condition,
            default_selected=form.default_selected.data,
            author=author(),
            based_on=form.based_on.data or 0,
        )
    except catalogue.StaleEdit as stale:
        db.session.rollback()
        return _stale(form, "consent_edit.html", context, stale)
    except ConsentError as error:
        db.session.rollback()
        form.text.errors = [str(error)]
        return render_template("backoffice/settings/consent_edit.html", **context)
    if edit is None:
        flash(_("Nothing changed."))
        return redirect(url_for("backoffice.settings_edit"), code=303)
    return _done(_("The consent “%(title)s” is saved.", title=definition.current_version.title))


def _stale(form, template: str, context: dict, stale: catalogue.StaleEdit):
    """Give the form back as filled in, with what someone else changed meanwhile."""
    form.based_on.data = stale.edits[0].id
    form.based_on.raw_data = [str(stale.edits[0].id)]
    context["names"] = {
        **context.get("names", {}),
        **staff_names([edit.created_by for edit in stale.edits]),
    }
    return render_template(f"backoffice/settings/{template}", theirs=stale.edits, **context)


@bp.route("/settings/consents/<row_id:consent_id>/retire", methods=["GET", "POST"])
@role_required("admin")
def consent_retire(consent_id: int):
    """Ask, then retire a consent: it is no longer offered; decisions on file stay."""
    definition = db.get_or_404(ConsentDefinition, consent_id)
    form = RetireForm()
    if request.method == "GET" or not form.validate():
        return render_template(
            "backoffice/settings/consent_retire.html", form=form, definition=definition
        )
    if definition.retired_at is not None:
        flash(_("This consent was already retired."))
        return redirect(url_for("backoffice.settings_edit"), code=303)
    catalogue.retire_consent(definition, author=author())
    return _done(_("The consent “%(title)s” is retired.", title=definition.current_version.title))


@bp.route("/settings/lists/new", methods=["GET", "POST"])
@role_required("admin")
def list_new():
    """Create a mailing list."""
    form = ListForm()
    form.prepare_wordings(_languages())
    valid = form.validate_on_submit()
    wordings = form.wordings_for(_languages()) if valid else None
    if wordings is None:
        return render_template("backoffice/settings/list_new.html", form=form)
    try:
        mailing_list = catalogue.add_list(
            form.name.data, form.description.data or "", public=form.public.data,
            author=author(), translations=wordings,
        )
    except ListError as error:
        db.session.rollback()
        form.name.errors = [str(error)]
        return render_template("backoffice/settings/list_new.html", form=form)
    return _done(_("The list “%(name)s” is added.", name=mailing_list.name))


@bp.route("/settings/lists/<row_id:list_id>", methods=["GET", "POST"])
@role_required("admin")
def list_edit(list_id: int):
    """Change a mailing list's name, description or visibility."""
    mailing_list = db.get_or_404(MailingList, list_id)
    if request.method == "POST":
        form = ListForm()
    else:
        form = ListForm(obj=mailing_list, based_on=catalogue.last_edit("list", mailing_list.id))
    form.prepare_wordings(_languages(), mailing_list.translations)
    context = {
        "form": form,
        "mailing_list": mailing_list,
        "edits": catalogue.edits("list", mailing_list.id),
    }
    context["names"] = staff_names([edit.created_by for edit in context["edits"]])
    if request.method == "GET" or not form.validate():
        return render_template("backoffice/settings/list_edit.html", **context)
    wordings = form.wordings_for(_languages(), mailing_list.translations)
    if wordings is None:
        return render_template("backoffice/settings/list_edit.html", **context)
    try:
        edit = catalogue.edit_list(
            mailing_list,
            name=form.name.data,
            description=form.description.data or "",
            translations=wordings,
            public=form.public.data,
            author=author(),
            based_on=form.based_on.data or 0,
        )
    except catalogue.StaleEdit as stale:
        db.session.rollback()
        return _stale(form, "list_edit.html", context, stale)
    if edit is None:
        flash(_("Nothing changed."))
        return redirect(url_for("backoffice.settings_edit"), code=303)
    return _done(_("The list “%(name)s” is saved.", name=mailing_list.name))
