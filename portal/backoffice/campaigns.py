"""Campaigns in the back office: write a draft, preview it for a contact, send it, watch it.

A draft's audience rule uses the settings area's rule editor (rows of field, operator and
value), validated and counted the same way.
"""

import sqlalchemy as sa
from flask import abort
from flask import flash
from flask import redirect
from flask import render_template
from flask import request
from flask import url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import FormField
from wtforms import SelectField
from wtforms import StringField
from wtforms import TextAreaField
from wtforms.validators import DataRequired
from wtforms.validators import Length

from portal import campaigns
from portal import catalogue
from portal import htmx
from portal import rules
from portal import settings
from portal.backoffice import OfferedChoices
from portal.backoffice import bp
from portal.backoffice import framed
from portal.backoffice import role_required
from portal.backoffice import staff_actor
from portal.backoffice.mail import MAIL_FRAME_POLICY
from portal.backoffice.settings import render_count
from portal.backoffice.settings import uncountable
from portal.backoffice.settings.forms import RuleForm
from portal.backoffice.settings.forms import prepare_rule
from portal.backoffice.settings.forms import rule_data
from portal.backoffice.settings.forms import rule_from
from portal.campaigns.sending import NOT_QUEUED
from portal.campaigns.sending import NOT_RENDERED
from portal.db import db
from portal.lists import MailingList

STAFF = ("admin", "agent")
#: Why a member of the list is left out of a campaign's audience (campaigns.LEFT_OUT), worded
#: as the send gate words its own refusals.
LEFT_OUT_LABELS = {
    "erased": _l("the contact's personal data was erased"),
    "erasure_requested": _l("the contact asked for erasure"),
    "processing_stopped": _l("the contact stopped the processing of their data"),
    "no_address": _l("the contact has no email address"),
    "opted_out": _l("the contact opted out of email"),
    "policy": _l("the campaign policy does not admit the contact's opt-in status"),
    "rule": _l("the contact does not match the campaign's audience rule"),
}
#: Why a campaign's message failed (sending.counts), in plain words.
FAILURE_LABELS = {
    NOT_RENDERED: _l("the message could not be rendered with the contact's values"),
    NOT_QUEUED: _l("the message could not be written for the contact's address"),
    "delivery": _l("the mail server did not accept it (the outbox says why)"),
}


class CampaignForm(OfferedChoices, FlaskForm):
    subject = StringField(_l("Subject"), validators=[DataRequired(), Length(max=200)])
    list_id = SelectField(_l("Mailing list"), coerce=int)
    audience = FormField(RuleForm, label=_l("Who on the list receives it (audience rule)"))
    text_body = TextAreaField(_l("Text"), validators=[DataRequired()])
    html_body = TextAreaField(_l("HTML (optional)"))


class SendForm(FlaskForm):
    """The confirmation of a send: only its CSRF token."""


def _form(campaign: campaigns.Campaign | None = None) -> CampaignForm:
    saved = {"audience": rule_data(campaign.audience_rule)} if campaign is not None else {}
    form = CampaignForm(obj=campaign, **saved)
    mailing_lists = db.session.scalars(sa.select(MailingList).order_by(MailingList.name))
    form.list_id.choices = [(item.id, item.name) for item in mailing_lists]
    prepare_rule(form.audience.form, [field.name for field in catalogue.rule_fields()])
    return form


def _save(form: CampaignForm, campaign: campaigns.Campaign | None):
    """Save the form as a draft; return it, or None with the errors beside their fields."""
    valid = form.validate()
    rule, rule_valid = rule_from(form.audience.form)
    if not (valid and rule_valid):
        return None
    values = {
        "subject": form.subject.data,
        "text_body": form.text_body.data,
        "html_body": form.html_body.data or "",
        "list_id": form.list_id.data,
        "audience_rule": rule,
    }
    try:
        if campaign is None:
            return campaigns.create(**values, author=staff_actor())
        return campaigns.update(campaign, **values)
    except campaigns.CampaignError as refused:
        # Every field's problem beside it, in one answer.
        for error in getattr(refused, "errors", [refused]):
            if error.field == "audience":
                field = form.audience.form.combine
            else:
                field = getattr(form, error.field or "subject")
            field.errors = [*field.errors, str(error)]
        return None


def _audience_count(form: CampaignForm) -> dict:
    """Return what the Count beside the audience rule shows: who would receive it, or why
    there is no number."""
    rule, problem = uncountable(form.audience.form)
    if problem:
        return problem
    if form.list_id.data not in {value for value, _label in form.list_id.choices}:
        return {"error": _("Not counted: %(reason)s", reason=_("choose a mailing list"))}
    return {"count": campaigns.audience_count(form.list_id.data, rule=rule)}


def _editor(form: CampaignForm, campaign: campaigns.Campaign | None):
    """Answer the Count button, or render the form (to fill in, or with its errors)."""
    context = {
        "form": form,
        "campaign": campaign,
        "placeholders": campaigns.PLACEHOLDERS,
        "counts": {},
    }
    if request.method == "POST" and request.form.get("count") == "audience":
        context["counts"] = {"audience": _audience_count(form)}
        return render_count("backoffice/campaigns/form.html", "audience", **context)
    return render_template("backoffice/campaigns/form.html", **context)


def _labels() -> dict:
    return {"left_out_labels": LEFT_OUT_LABELS, "failure_labels": FAILURE_LABELS}


def _live(campaign: campaigns.Campaign, counts: dict) -> bool:
    """Say whether messages are still to be queued or sent, so that htmx polls the counts.

    A failed job stops the polling, so that the resume form stays put while staff reach for it.
    """
    if campaign.stalled:
        return False
    job = campaign.job
    unfinished = campaign.status == "sending" and not (job is not None and job.finished)
    return unfinished or bool(counts["queued"])


def _breakdown(campaign: campaigns.Campaign, policy: str | None = None) -> dict:
    """Return who a draft would go to and who not, or why that cannot be said."""
    try:
        return campaigns.audience_breakdown(campaign.list_id, policy, campaign.audience_rule)
    except rules.RuleError as error:
        # A field the rule uses was since marked sensitive, say: sending refuses it too.
        return {"error": _("The audience rule no longer holds: %(reason)s", reason=error)}


@bp.get("/campaigns")
@role_required(*STAFF)
def campaigns_list():
    """List campaigns, newest first."""
    return render_template("backoffice/campaigns/list.html", campaigns=campaigns.recent())


@bp.route("/campaigns/new", methods=["GET", "POST"])
@role_required(*STAFF)
def campaigns_new():
    """Write a new draft campaign."""
    form = _form()
    if (
        request.method == "POST"
        and request.form.get("count") is None
        and (campaign := _save(form, None)) is not None
    ):
        db.session.commit()
        flash(_("The draft is saved. Preview it, then send it."))
        return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign.id), code=303)
    return _editor(form, None)


@bp.route("/campaigns/<row_id:campaign_id>/edit", methods=["GET", "POST"])
@role_required(*STAFF)
def campaigns_edit(campaign_id: int):
    """Change a draft campaign."""
    campaign = db.get_or_404(campaigns.Campaign, campaign_id)
    if not campaign.editable:
        flash(_("This campaign is no longer a draft: it cannot be changed."))
        return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign.id), code=303)
    form = _form(campaign)
    if (
        request.method == "POST"
        and request.form.get("count") is None
        and _save(form, campaign) is not None
    ):
        db.session.commit()
        flash(_("The draft is saved."))
        return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign.id), code=303)
    return _editor(form, campaign)


@bp.get("/campaigns/<row_id:campaign_id>")
@role_required(*STAFF)
def campaigns_show(campaign_id: int):
    """Show a campaign and its live counts; htmx polls the counts while it is sending.

    The polled fragment also carries the campaign's status and banner (out of band), so that
    they change with the counts rather than at the next reload.
    """
    campaign = db.get_or_404(campaigns.Campaign, campaign_id)
    counts = campaigns.counts(campaign)
    context = {
        "campaign": campaign,
        "counts": counts,
        "live": _live(campaign, counts),
        **_labels(),
    }
    if campaign.editable and not htmx.wants_fragment():
        # A draft's audience as it stands now; once sent, the page shows it as it stood then.
        context["breakdown"] = _breakdown(campaign)
    return htmx.render(
        "backoffice/campaigns/show.html", "backoffice/campaigns/_poll.html", **context
    )


def _preview_contact(campaign: campaigns.Campaign):
    """Return (contact, error) for the contact named in the query string."""
    reference = request.args.get("contact", "")
    try:
        contact = campaigns.find_contact(reference)
    except campaigns.CampaignError as error:
        return None, str(error)
    if contact is None or contact.erased_at is not None:
        return None, _("No contact has this email address or id.")
    return contact, None


@bp.get("/campaigns/<row_id:campaign_id>/preview")
@role_required(*STAFF)
def campaigns_preview(campaign_id: int):
    """Show the message a chosen contact would receive."""
    campaign = db.get_or_404(campaigns.Campaign, campaign_id)
    contact, error = _preview_contact(campaign)
    message = None
    if contact is not None:
        try:
            message = campaigns.render(campaign, contact)
        except campaigns.CampaignError as failed:
            # That contact would get nothing: the send job counts them as failed.
            error = _(
                "The message cannot be rendered for this contact, who would not receive it: "
                "%(reason)s",
                reason=failed,
            )
    return render_template(
        "backoffice/campaigns/preview.html",
        campaign=campaign,
        contact=contact,
        error=error,
        message=message,
        reference=request.args.get("contact", ""),
    )


@bp.get("/campaigns/<row_id:campaign_id>/preview/html")
@role_required(*STAFF)
def campaigns_preview_html(campaign_id: int):
    """Serve the previewed HTML part, sandboxed, for the frame on the preview page."""
    campaign = db.get_or_404(campaigns.Campaign, campaign_id)
    contact, _error = _preview_contact(campaign)
    if contact is None:
        abort(404)
    try:
        html = campaigns.render(campaign, contact)[2]
    except campaigns.CampaignError:
        html = None  # the preview page says why; it shows no frame then
    return framed(html, MAIL_FRAME_POLICY, new_tab=True)


@bp.route("/campaigns/<row_id:campaign_id>/send", methods=["GET", "POST"])
@role_required(*STAFF)
def campaigns_send(campaign_id: int):
    """Ask to confirm sending a draft (GET); send it (POST)."""
    campaign = db.get_or_404(campaigns.Campaign, campaign_id)
    form = SendForm()
    if not campaign.editable:
        flash(_("This campaign was already sent."))
        return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign.id), code=303)
    error = None
    if form.validate_on_submit():
        try:
            campaigns.send(campaign, author=staff_actor())
        except campaigns.CampaignError as refused:
            db.session.rollback()
            error = str(refused)
        else:
            db.session.commit()
            # No flash: the page's own banner says how sending goes, and stays true as it moves.
            return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign.id), code=303)
    policy = settings.values()["campaign_policy"]
    return render_template(
        "backoffice/campaigns/send.html",
        campaign=campaign,
        form=form,
        error=error,
        policy=policy,
        breakdown=_breakdown(campaign, policy),
        **_labels(),
    )


@bp.post("/campaigns/<row_id:campaign_id>/resume")
@role_required(*STAFF)
def campaigns_resume(campaign_id: int):
    """Start a campaign's failed send job again from where it stopped."""
    campaign = db.get_or_404(campaigns.Campaign, campaign_id)
    # CSRFProtect checked the form's token before this view (a missing one gets its 400 page).
    try:
        campaigns.resume(campaign)
    except campaigns.CampaignError as refused:
        db.session.rollback()
        flash(_("Sending cannot resume: %(reason)s", reason=refused))
    else:
        # No flash, as after Send: the page's banner says how sending goes.
        db.session.commit()
    return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign.id), code=303)
