"""Outgoing mail in the back office: the outbox with the gate's decisions, and the demo mailbox."""

import re

from flask import abort
from flask import current_app
from flask import render_template
from flask import request
from markupsafe import Markup
from markupsafe import escape

from portal import mailbox
from portal import outbox
from portal.backoffice import bp
from portal.backoffice import framed
from portal.db import db

URL = re.compile(r"https?://[^\s<>\"']+")

# The captured HTML part is shown in a sandboxed frame: no script, no form, nothing loaded from
# elsewhere; only its links work, opening in a new tab (framed gives the document a base target
# _blank; the frame's sandbox, here and on the iframe, allows that popup out of the sandbox).
MAIL_FRAME_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "frame-ancestors 'self'; sandbox allow-popups allow-popups-to-escape-sandbox"
)


def linkify(text: str) -> Markup:
    """Return plain text as HTML with its web addresses made into links."""
    parts, last = [], 0
    for match in URL.finditer(text):
        url = match.group(0)
        parts.append(escape(text[last:match.start()]))
        parts.append(Markup('<a href="{0}">{0}</a>').format(url))
        last = match.end()
    parts.append(escape(text[last:]))
    return Markup("").join(parts)


@bp.get("/outbox")
def outbox_list():
    """List outgoing messages with their status and the gate's decisions."""
    status = request.args.get("status")
    if status not in (None, "", *outbox.STATUSES):
        abort(404)
    return render_template("backoffice/outbox.html", messages=outbox.recent(status=status or None),
                           counts=outbox.status_counts(), status=status or "")


def _demo_only():
    if not current_app.config["PORTAL_DEMO"]:
        abort(404)


@bp.get("/mailbox")
def mailbox_list():
    """List the mail the demo mailbox caught."""
    _demo_only()
    return render_template("backoffice/mailbox.html", messages=mailbox.messages())


@bp.get("/mailbox/<row_id:mail_id>")
def mailbox_show(mail_id: int):
    """Show one caught message: its headers, its text with working links, its HTML."""
    _demo_only()
    captured = db.get_or_404(mailbox.CapturedMail, mail_id)
    text = captured.part("plain")
    return render_template("backoffice/mailbox_show.html", mail=captured,
                           headers=list(captured.parsed().items()),
                           text=linkify(text) if text else None,
                           has_html=captured.part("html") is not None)


@bp.get("/mailbox/<row_id:mail_id>/html")
def mailbox_html(mail_id: int):
    """Serve a caught message's HTML part, sandboxed, for the frame on its page."""
    _demo_only()
    html = db.get_or_404(mailbox.CapturedMail, mail_id).part("html")
    return framed(html, MAIL_FRAME_POLICY, new_tab=True)
