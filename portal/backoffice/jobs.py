"""Background jobs in the back office: start one, watch its progress."""

from flask import abort
from flask import flash
from flask import redirect
from flask import render_template
from flask import url_for
from flask_babel import gettext as _
from flask_login import current_user

from portal import doi
from portal import htmx
from portal import jobs
from portal.backoffice import bp
from portal.backoffice import role_required
from portal.backoffice import staff_actor
from portal.campaigns.sending import SEND
from portal.db import db
from portal.reencryption import REENCRYPT

#: Jobs staff may start from the jobs page, by role.
STARTABLE = {
    REENCRYPT.name: ("admin",),
    doi.REMIND.name: ("admin",),
    doi.PRUNE.name: ("admin",),
}


@bp.get("/jobs")
def jobs_list():
    """List recent jobs."""
    startable = [jobs.KINDS[name] for name, roles in STARTABLE.items()
                 if current_user.role in roles]
    return render_template("backoffice/jobs.html", jobs=jobs.recent(), startable=startable)


@bp.post("/jobs/<kind>")
@role_required("admin")
def jobs_start(kind: str):
    """Start a job; the worker picks it up."""
    if kind not in STARTABLE:
        abort(404)
    job = jobs.start(kind, created_by=staff_actor())
    db.session.commit()
    flash(_("The job is queued. This page shows its progress."))
    return redirect(url_for("backoffice.jobs_show", job_id=job.id), code=303)


@bp.get("/jobs/<row_id:job_id>")
def jobs_show(job_id: int):
    """Show a job's progress; htmx polls the progress fragment while it runs."""
    job = db.get_or_404(jobs.Job, job_id)
    return htmx.render("backoffice/job.html", "backoffice/_job_poll.html", job=job,
                       campaign_id=_campaign_of(job))


@bp.post("/jobs/<row_id:job_id>/resume")
@role_required("admin")
def jobs_resume(job_id: int):
    """Queue a failed job again, to go on after its last committed item."""
    job = db.get_or_404(jobs.Job, job_id)
    campaign_id = _campaign_of(job)
    if campaign_id is not None:
        # A campaign checks its audience rule before it goes on: its own page resumes it.
        return redirect(url_for("backoffice.campaigns_show", campaign_id=campaign_id), code=303)
    try:
        jobs.resume(job)
    except jobs.JobError:
        flash(_("Only a job that failed can be resumed."))
        return redirect(url_for("backoffice.jobs_show", job_id=job.id), code=303)
    db.session.commit()
    flash(_("The job goes on after the last item it finished. This page shows its progress."))
    return redirect(url_for("backoffice.jobs_show", job_id=job.id), code=303)


def _campaign_of(job: jobs.Job) -> int | None:
    """Return the campaign a send job queues, if it is one."""
    return job.params.get("campaign_id") if job.kind == SEND.name else None
