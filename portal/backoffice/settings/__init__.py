"""The consent-page settings (S2): one place, admins only, every change versioned.

The page itself, the history and the rule counts live here; consents and lists, and the
preview, in the modules beside it.
"""

from flask import current_app
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from sqlalchemy.exc import IntegrityError

from portal import catalogue
from portal import footer
from portal import htmx
from portal import settings
from portal.backoffice import bp
from portal.backoffice import role_required
from portal.backoffice.settings.forms import SETTING_LABELS
from portal.backoffice.settings.forms import STALE_FORM
from portal.backoffice.settings.forms import SettingsForm
from portal.backoffice.settings.forms import describe_rule
from portal.backoffice.settings.forms import language_name
from portal.backoffice.settings.forms import prepare_rule
from portal.backoffice.settings.forms import rule_data
from portal.backoffice.settings.forms import rule_from
from portal.backoffice.settings.forms import show_setting
from portal.choices import forget_catalogue
from portal.consent import ConsentDefinition
from portal.db import db
from portal.lists import MailingList
from portal.staff import StaffUser

#: The rule editors of the settings form, by the setting each one writes.
RULES = {"audience": "audience_rule", "notification": "notification_rule"}
EDITABLE = ("page_enabled", "footer_html", "policy_html", "campaign_policy", *RULES.values())


@bp.context_processor
def settings_helpers() -> dict:
    """Give the settings templates their ways of showing rules and settings."""
    return {
        "describe_rule": describe_rule,
        "show_setting": show_setting,
        "setting_labels": SETTING_LABELS,
    }


def author() -> str:
    """Return how the history names the signed-in staff member."""
    return f"staff:{current_user.id}"


def staff_names(references) -> dict[str, str]:
    """Return {"staff:<id>": email} for the staff members named in history rows."""
    ids = {
        int(ref.split(":", 1)[1])
        for ref in references
        if ref.startswith("staff:") and ref.split(":", 1)[1].isdigit()
    }
    if not ids:
        return {}
    users = db.session.scalars(db.select(StaffUser).where(StaffUser.id.in_(ids)))
    return {f"staff:{user.id}": user.email for user in users}


def uncountable(rule_form) -> tuple[dict | None, dict | None]:
    """Return the rule a rule editor holds and None, or None and what its count shows instead:
    why there is no number."""
    rule, valid = rule_from(rule_form)
    if valid:
        return rule, None
    reasons = [error for entry in rule_form.rows for error in entry.form.value.errors]
    reasons += [*rule_form.nested.errors, *rule_form.combine.errors]
    reason = (reasons or [""])[0]
    return None, {"error": _("Not counted: %(reason)s", reason=reason)}


def rule_count(rule_form) -> dict:
    """Return what the count beside a rule editor shows: a number, or why there is none."""
    rule, problem = uncountable(rule_form)
    return problem or {"count": catalogue.count_matching(rule)}


def render_count(page: str, name: str, counts: dict, **context):
    """Answer a Count button: the count alone for htmx, the whole form otherwise."""
    return htmx.render(
        page,
        "backoffice/settings/_count.html",
        name=name,
        result=counts[name],
        counts=counts,
        **context,
    )


def _form_from(values: dict, based_on: int, note: str = "") -> SettingsForm:
    """Return the settings form filled in with these values (not with the request's)."""
    data = {name: values[name] for name in EDITABLE if not name.endswith("_rule")}
    data.update({editor: rule_data(values[key]) for editor, key in RULES.items()})
    translations = values["policy_translations"] or {}
    data["policy_wordings"] = [{"language": language, "html": translations.get(language, "")}
                               for language in current_app.config["PORTAL_LANGUAGES"]]
    form = SettingsForm(formdata=None, data={**data, "based_on": based_on, "note": note})
    _prepare(form)
    return form


def _prepare(form: SettingsForm) -> None:
    names = [field.name for field in catalogue.rule_fields()]
    prepare_rule(form.audience.form, names)
    prepare_rule(form.notification.form, names)
    for entry in form.policy_wordings:
        entry.form.html.label.text = _l("Policy statement in %(language)s",
                                        language=language_name(entry.form.language.data))


def _policy_translations(form: SettingsForm) -> dict | None:
    """Return the posted policy statement of each language ({language: html}), the saved ones
    for a form with none (from before statements per language), or None, with the form told
    why, for one that leaves some languages out."""
    languages = current_app.config["PORTAL_LANGUAGES"]
    posted = {entry.form.language.data: entry.form.html.data or ""
              for entry in form.policy_wordings}
    if not posted:
        return settings.values()["policy_translations"] or {}
    if set(posted) != set(languages):
        form.policy_html.errors = [*form.policy_html.errors, STALE_FORM]
        return None
    return {language: settings.sanitize_html(html)
            for language, html in sorted(posted.items()) if html.strip()}


def _version_number() -> int:
    latest = settings.current()
    return latest.version if latest else 0


def _context(form: SettingsForm) -> dict:
    return {
        "form": form,
        "saved": settings.values(),
        "consents": db.session.scalars(
            db.select(ConsentDefinition).order_by(
                ConsentDefinition.retired_at.is_not(None), ConsentDefinition.id
            )
        ).all(),
        "mailing_lists": db.session.scalars(
            db.select(MailingList).order_by(MailingList.name)
        ).all(),
    }


def _page(form: SettingsForm, **context):
    context.setdefault("counts", {})
    return render_template("backoffice/settings/edit.html", **_context(form), **context)


@bp.route("/settings", methods=["GET", "POST"])
@role_required("admin")
def settings_edit():
    """Show and save the consent-page settings; the Count buttons count a rule's contacts."""
    if request.method == "GET":
        return _page(_form_from(settings.values(), _version_number()))
    form = SettingsForm()
    _prepare(form)
    counted = request.form.get("count")
    if counted in RULES:
        counts = {counted: rule_count(getattr(form, counted).form)}
        return render_count("backoffice/settings/edit.html", counted, counts, **_context(form))
    valid = form.validate()
    policy_translations = _policy_translations(form)
    valid = valid and policy_translations is not None
    rule_values = {}
    for editor, key in RULES.items():
        rule, rule_valid = rule_from(getattr(form, editor).form)
        rule_values[key] = rule
        valid = valid and rule_valid
    if not valid:
        return _page(form)
    wanted = {
        "page_enabled": form.page_enabled.data,
        "footer_html": form.footer_html.data or "",
        "policy_html": form.policy_html.data or "",
        "policy_translations": policy_translations,
        "campaign_policy": form.campaign_policy.data,
        **rule_values,
    }
    wanted["footer_html"] = settings.sanitize_html(wanted["footer_html"])
    wanted["policy_html"] = settings.sanitize_html(wanted["policy_html"])
    footer_problem = footer.problem(wanted["footer_html"])
    if footer_problem:
        form.footer_html.errors.append(footer_problem)
        return _page(form)
    changes = {name: value for name, value in wanted.items() if settings.values()[name] != value}
    based_on = form.based_on.data or 0
    if not changes:
        flash(_("Nothing changed."))
        return redirect(url_for("backoffice.settings_edit"), code=303)
    try:
        version = settings.save(
            changes, based_on=based_on, author=author(), note=form.note.data or ""
        )
        db.session.commit()
    except (settings.StaleSettings, IntegrityError):
        db.session.rollback()
        return _stale(wanted, based_on, form.note.data or "")
    forget_catalogue()
    flash(_("The settings are saved as version %(number)s.", number=version.version))
    return redirect(url_for("backoffice.settings_edit"), code=303)


def _stale(wanted: dict, based_on: int, note: str):
    """Give the form back with what someone else changed since it was opened, nothing lost."""
    latest = settings.current()
    merged, theirs, both = catalogue.rebase_settings(wanted, based_on)
    return _page(
        _form_from(merged, _version_number(), note),
        stale=latest,
        theirs=theirs,
        both=[str(SETTING_LABELS[name]) for name in both],
        names=staff_names([latest.created_by] if latest else []),
    )


@bp.get("/settings/history")
@role_required("admin")
def settings_history():
    """Show every settings version and every edit of a consent or a list."""
    versions = catalogue.settings_history()
    edits = catalogue.edits()
    names = staff_names(
        [v.created_by for v, _changes in versions] + [edit.created_by for edit in edits]
    )
    return render_template(
        "backoffice/settings/history.html", versions=versions, edits=edits, names=names
    )


# The other parts of the settings area register their views on the same blueprint.
from portal.backoffice.settings import consents  # noqa: E402,F401
from portal.backoffice.settings import preview  # noqa: E402,F401
