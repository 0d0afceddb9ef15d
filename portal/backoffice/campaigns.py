"""Campaigns in the back office: write a draft, preview it for a contact, send it, watch it."""

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
from wtforms import SelectField
from wtforms import StringField
from wtforms import TextAreaField
from wtforms.validators import DataRequired
from wtforms.validators import Length

from portal import campaigns
from portal import htmx
from portal import settings
from portal.backoffice import bp
from portal.backoffice import framed
from portal.backoffice import role_required
from portal.backoffice import staff_actor
from portal.backoffice.mail import MAIL_FRAME_POLICY
from portal.db import db
from portal.lists import MailingList

STAFF = ("admin", "agent")


class CampaignForm(FlaskForm):
    subject = StringField(_l("Subject"), validators=[DataRequired(), Length(max=200)])
    list_id = SelectField(_l("Mailing list"), coerce=int)
    text_body = TextAreaField(_l("Text"), validators=[DataRequired()])
    html_body = TextAreaField(_l("HTML (optional)"))


class SendForm(FlaskForm):
    """The confirmation of a send: only its CSRF token."""


def _form(campaign: campaigns.Campaign | None = None) -> CampaignForm:
    form = CampaignForm(obj=campaign)
    mailing_lists = db.session.scalars(sa.select(MailingList).order_by(MailingList.name))
    form.list_id.choices = [(item.id, item.name) for item in mailing_lists]
    return form


def _save(form: CampaignForm, campaign: campaigns.Campaign | None):
    """Save the form as a draft; return it, or None with the domain's error on its field."""
    values = {
        "subject": form.subject.data,
        "text_body": form.text_body.data,
        "html_body": form.html_body.data or "",
        "list_id": form.list_id.data,
    }
    try:
        if campaign is None:
            return campaigns.create(**values, author=staff_actor())
        return campaigns.update(campaign, **values)
    except campaigns.CampaignError as error:
        field = getattr(form, error.field or "subject")
        field.errors = [*field.errors, str(error)]
        return None


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
    if form.validate_on_submit() and (campaign := _save(form, None)) is not None:
        db.session.commit()
        flash(_("The draft is saved. Preview it, then send it."))
        return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign.id), code=303)
    return render_template(
        "backoffice/campaigns/form.html",
        form=form,
        campaign=None,
        placeholders=campaigns.PLACEHOLDERS,
    )


@bp.route("/campaigns/<int(max=2147483647):campaign_id>/edit", methods=["GET", "POST"])
@role_required(*STAFF)
def campaigns_edit(campaign_id: int):
    """Change a draft campaign."""
    campaign = db.get_or_404(campaigns.Campaign, campaign_id)
    if not campaign.editable:
        flash(_("This campaign is no longer a draft: it cannot be changed."))
        return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign.id), code=303)
    form = _form(campaign)
    if form.validate_on_submit() and _save(form, campaign) is not None:
        db.session.commit()
        flash(_("The draft is saved."))
        return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign.id), code=303)
    return render_template(
        "backoffice/campaigns/form.html",
        form=form,
        campaign=campaign,
        placeholders=campaigns.PLACEHOLDERS,
    )


@bp.get("/campaigns/<int(max=2147483647):campaign_id>")
@role_required(*STAFF)
def campaigns_show(campaign_id: int):
    """Show a campaign and its live counts; htmx polls the counts while it is sending."""
    campaign = db.get_or_404(campaigns.Campaign, campaign_id)
    context = {"campaign": campaign, "counts": campaigns.counts(campaign)}
    if campaign.editable and not htmx.wants_fragment():
        context["audience"] = campaigns.audience_count(campaign.list_id)
    return htmx.render(
        "backoffice/campaigns/show.html", "backoffice/campaigns/_counts.html", **context
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


@bp.get("/campaigns/<int(max=2147483647):campaign_id>/preview")
@role_required(*STAFF)
def campaigns_preview(campaign_id: int):
    """Show the message a chosen contact would receive."""
    campaign = db.get_or_404(campaigns.Campaign, campaign_id)
    contact, error = _preview_contact(campaign)
    message = campaigns.render(campaign, contact) if contact is not None else None
    return render_template(
        "backoffice/campaigns/preview.html",
        campaign=campaign,
        contact=contact,
        error=error,
        message=message,
        reference=request.args.get("contact", ""),
    )


@bp.get("/campaigns/<int(max=2147483647):campaign_id>/preview/html")
@role_required(*STAFF)
def campaigns_preview_html(campaign_id: int):
    """Serve the previewed HTML part, sandboxed, for the frame on the preview page."""
    campaign = db.get_or_404(campaigns.Campaign, campaign_id)
    contact, _error = _preview_contact(campaign)
    if contact is None:
        abort(404)
    return framed(campaigns.render(campaign, contact)[2], MAIL_FRAME_POLICY)


@bp.route("/campaigns/<int(max=2147483647):campaign_id>/send", methods=["GET", "POST"])
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
            flash(_("The campaign is being sent. This page shows its progress."))
            return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign.id), code=303)
    policy = settings.values()["campaign_policy"]
    return render_template(
        "backoffice/campaigns/send.html",
        campaign=campaign,
        form=form,
        error=error,
        policy=policy,
        audience=campaigns.audience_count(campaign.list_id, policy),
    )
