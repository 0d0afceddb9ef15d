"""The demo mailbox: an SMTP server started with the demo that keeps every message it receives.

Mail still leaves through the outbox and Flask-Mail over real SMTP; it simply arrives here
instead of at the recipients, so a newcomer can read it in the back office and click its links.
"""

import email
import email.policy
import logging
from datetime import datetime

import sqlalchemy as sa
from aiosmtpd.controller import Controller
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column

from portal.db import db
from portal.db import utcnow

log = logging.getLogger(__name__)


class CapturedMail(db.Model):
    __tablename__ = "captured_mail"

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    mail_from: Mapped[str] = mapped_column(sa.String(254))
    # The envelope recipients, one per line.
    rcpt_to: Mapped[str] = mapped_column(sa.Text)
    subject: Mapped[str] = mapped_column(sa.String(998), default="")
    message_id: Mapped[str | None] = mapped_column(sa.String(250), index=True)
    raw: Mapped[str] = mapped_column(sa.Text)

    def parsed(self) -> email.message.EmailMessage:
        # From bytes (its UTF-8, as the portal sends; a capture of another charset's 8bit mail
        # was already decoded with replacement): parsed from a str, an 8bit part's characters
        # would be re-encoded as raw-unicode-escape before its charset decodes them, and "é"
        # would show as "�", "–" as a literal "\u2013".
        return email.message_from_bytes(self.raw.encode("utf-8"), policy=email.policy.default)

    def part(self, subtype: str) -> str | None:
        """Return the message's text/plain or text/html part, decoded with its declared
        transfer encoding (8bit, quoted-printable, base64) and charset."""
        body = self.parsed().get_body(preferencelist=(subtype,))
        return body.get_content() if body is not None else None


def capture(mail_from: str, rcpt_tos: list[str], data: bytes) -> CapturedMail:
    """Store one received message."""
    captured = CapturedMail(
        mail_from=mail_from[:254], rcpt_to="\n".join(rcpt_tos),
        raw=data.decode("utf-8", errors="replace"),
    )
    parsed = captured.parsed()
    captured.subject = str(parsed.get("Subject", ""))[:998]
    captured.message_id = str(parsed.get("Message-ID", ""))[:250] or None
    db.session.add(captured)
    db.session.flush()
    return captured


def messages(limit: int = 100) -> list[CapturedMail]:
    """Return the newest captured messages first."""
    statement = sa.select(CapturedMail).order_by(CapturedMail.id.desc()).limit(limit)
    return list(db.session.scalars(statement))


class _Handler:
    def __init__(self, app):
        self.app = app

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        with self.app.app_context():
            capture(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
            db.session.commit()
        return "250 Message accepted for delivery"


def start_server(app) -> Controller:
    """Start the capturing SMTP server on the configured mail host and port."""
    controller = Controller(_Handler(app), hostname=app.config["MAIL_SERVER"],
                            port=app.config["MAIL_PORT"])
    controller.start()
    log.info("demo mailbox listening on %s:%s", controller.hostname, controller.port)
    return controller
