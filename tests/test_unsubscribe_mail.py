"""Unsubscribe by email (M7): `flask mail unsubscribe` reads a mail as a pipe alias delivers it,
finds the List-Unsubscribe mailto's token, and does what the one-click POST does."""

import io
import logging
import re
from email.header import Header
from email.message import EmailMessage
from email.policy import SMTP
from types import SimpleNamespace
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
from conftest import make_config
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from portal import campaigns
from portal import contacts
from portal import create_app
from portal import jobs
from portal import ledger
from portal import lists
from portal import outbox
from portal import unsubscribe
from portal import unsubscribe_mail
from portal.contacts import OptIn
from portal.db import db
from portal.links import token_digest

INBOUND = "leave@example.com"


@pytest.fixture
def reader(app):
    """A double opt-in contact subscribed to two lists, committed."""
    contact = contacts.add_contact("reader@example.com", first_name="Ada", method="cli", actor="t")
    contacts.record_opt_in(contact, OptIn.DOUBLE, method="cli", actor="t")
    news = lists.create_list("news", "News")
    offers = lists.create_list("offers", "Offers")
    for mailing_list in (news, offers):
        lists.set_subscription(contact, mailing_list, True, method="cli", actor="t")
    db.session.commit()
    return contact, news, offers


def status(contact, mailing_list) -> str:
    subscription = db.session.get(lists.Subscription, (contact.id, mailing_list.id))
    db.session.refresh(subscription)
    return subscription.status


def reply(subject: str, body: str = "", **headers) -> bytes:
    """Return the bytes of a mail a client sends to the unsubscribe address."""
    message = EmailMessage(policy=SMTP)
    message["From"] = "Ada <reader@example.com>"
    message["To"] = INBOUND
    message["Subject"] = subject
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body or "Sent from my phone")
    return message.as_bytes()


def written(subject_field: str, body: str = "Please.") -> bytes:
    """Return a mail whose Subject field is exactly `subject_field` (folds as CRLF + space)."""
    subject_field = subject_field.replace("\n", "\r\n")
    return (
        f"From: reader@example.com\r\nTo: {INBOUND}\r\nSubject: {subject_field}\r\n\r\n{body}\r\n"
    ).encode()


def pipe(runner, raw: bytes):
    """Deliver a mail to the command as a pipe alias does."""
    return runner.invoke(args=["mail", "unsubscribe"], input=raw)


def left(contact, news, offers) -> bool:
    """Say whether the contact left news and news only."""
    return status(contact, news) == "unsubscribed" and status(contact, offers) == "subscribed"


def test_a_plain_subject_leaves_that_list_only_and_the_ledger_says_how(app, runner, reader):
    contact, news, offers = reader
    token = unsubscribe.make_token(contact, news)
    result = pipe(runner, reply(f"unsubscribe {token}", User_Agent="Mailer/1.0"))
    assert result.exit_code == 0, result.output
    assert "unsubscribed" in result.output
    assert left(contact, news, offers)
    [event] = [e for e in ledger.history(contact.public_id) if e.value_to == "unsubscribed"]
    assert (event.subject_ref, event.actor, event.method) == ("news", "contact", "mailto")
    evidence = db.session.get(ledger.LedgerEvidence, event.id)
    assert evidence.user_agent == "Mailer/1.0"
    assert evidence.ip_address is None

    again = pipe(runner, reply(f"unsubscribe {token}"))
    assert again.exit_code == 0
    assert "already unsubscribed" in again.output
    assert len([e for e in ledger.history(contact.public_id) if e.value_to == "unsubscribed"]) == 1


@pytest.mark.parametrize(
    "subject",
    [
        "Re: unsubscribe {token}",
        "RE:  Re:   UNSUBSCRIBE\t {token}  ",
        "unsubscribe%20{token}",  # a client that left the mailto's query encoded
        Header("unsubscribe {token} — merci", "utf-8"),  # RFC 2047 encoded words
    ],
    ids=["re", "whitespace", "percent-encoded", "encoded-words"],
)
def test_the_token_is_found_however_the_client_wrote_the_subject(app, runner, reader, subject):
    contact, news, offers = reader
    token = unsubscribe.make_token(contact, news)
    if isinstance(subject, Header):
        encoded = Header(str(subject).format(token=token), "utf-8").encode(maxlinelen=60)
        assert "?=\n =?utf-8?" in encoded  # several encoded words, on folded lines
        raw = written(encoded)
        assert token.encode() not in raw
    else:
        raw = reply(subject.format(token=token))
    assert pipe(runner, raw).exit_code == 0
    assert left(contact, news, offers)


def test_a_subject_folded_across_lines_is_unfolded(app, runner, reader):
    contact, news, offers = reader
    token = unsubscribe.make_token(contact, news)
    raw = written(f"Re:\n unsubscribe\n\t{token}")
    assert pipe(runner, raw).exit_code == 0
    assert left(contact, news, offers)


def test_a_token_only_in_the_body_is_found(app, runner, reader):
    contact, news, offers = reader
    token = unsubscribe.make_token(contact, news)
    raw = reply("Re:", f"Hello,\n\nunsubscribe {token}.\n\nAda\n")
    assert token.encode() not in raw.split(b"\r\n\r\n", 1)[0]  # not in the headers
    assert pipe(runner, raw).exit_code == 0
    assert left(contact, news, offers)


def test_an_mbox_from_line_before_the_message_is_tolerated(app, runner, reader):
    contact, news, offers = reader
    token = unsubscribe.make_token(contact, news)
    raw = b"From reader@example.com Mon Mar  2 09:00:00 2026\n" + reply(f"unsubscribe {token}")
    assert pipe(runner, raw).exit_code == 0
    assert left(contact, news, offers)


def bad_tokens(contact, news) -> dict[str, str]:
    token = unsubscribe.make_token(contact, news)
    # A character inside the signature: the last one carries unused bits.
    flipped = "A" if token[-5] != "A" else "B"
    return {
        "tampered": token[:-5] + flipped + token[-4:],
        "unknown-list": unsubscribe.make_token(contact, SimpleNamespace(id=999999)),
        "other-purpose": unsubscribe.make_page_token(contact, news),
        "unknown-key": "k9" + token[token.index(".") :],
    }


@pytest.mark.parametrize("kind", ["tampered", "unknown-list", "other-purpose", "unknown-key"])
def test_a_bad_token_changes_nothing_exits_0_and_logs_only_its_digest(
    app, runner, reader, caplog, kind
):
    contact, news, offers = reader
    token = bad_tokens(contact, news)[kind]
    before = len(ledger.history(contact.public_id))
    with caplog.at_level(logging.INFO, logger="portal.unsubscribe_mail"):
        result = pipe(runner, reply(f"unsubscribe {token}"))
    assert result.exit_code == 0, result.output
    assert "no valid unsubscribe token" in result.output
    assert status(contact, news) == status(contact, offers) == "subscribed"
    assert len(ledger.history(contact.public_id)) == before
    assert token not in caplog.text + result.output
    assert token_digest(token) in caplog.text


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\xff\xfe garbage with no headers at all",
        b"Subject: =?x-unknown?B?////?=\r\n\r\nunsubscribe now please\r\n",
        b"Subject: hello\r\nContent-Type: text/plain; charset=x-nonsense\r\n\r\n\xff\xfe\r\n",
    ],
    ids=["empty", "garbage", "unknown-charset-subject", "unknown-charset-body"],
)
def test_a_mail_without_a_token_exits_0(app, runner, reader, raw):
    contact, news, offers = reader
    result = pipe(runner, raw)
    assert result.exit_code == 0, result.output
    assert "no unsubscribe token" in result.output
    assert status(contact, news) == "subscribed"


def test_a_huge_mail_is_read_to_its_end_and_its_token_still_found(app, runner, reader):
    contact, news, offers = reader
    token = unsubscribe.make_token(contact, news)
    raw = reply(f"unsubscribe {token}", "x" * 1000 + "\n" * 2 + ("y" * 70 + "\n") * 20000)
    assert len(raw) > unsubscribe_mail.MAX_BYTES
    delivered = io.BytesIO(raw)  # click hands a file-like input to the command as it is
    assert runner.invoke(args=["mail", "unsubscribe"], input=delivered).exit_code == 0
    assert delivered.tell() == len(raw)  # read to its end, as a mail server expects
    assert left(contact, news, offers)


def test_the_database_unavailable_exits_75_so_the_mail_server_retries(tmp_path, caplog):
    broken = create_app(make_config(f"sqlite:///{tmp_path}/no/such/folder/portal.sqlite3"))
    with broken.app_context():  # a well-signed token: reading it needs the database
        token = unsubscribe.make_token(SimpleNamespace(public_id="c1"), SimpleNamespace(id=1))
    result = broken.test_cli_runner().invoke(
        args=["mail", "unsubscribe"], input=reply(f"unsubscribe {token}")
    )
    assert result.exit_code == unsubscribe_mail.EX_TEMPFAIL == 75
    assert "temporary failure" in result.output
    assert token not in caplog.text + result.output


def test_end_to_end_a_campaigns_mailto_reply_leaves_that_list_only(
    app, runner, reader, smtp, monkeypatch
):
    contact, news, offers = reader
    monkeypatch.setitem(app.config, "PORTAL_UNSUBSCRIBE_MAILTO", INBOUND)
    campaign = campaigns.create(
        subject="News of the month",
        text_body="Hello {{ first_name }}.\n",
        html_body="<p>Hello {{ first_name }}.</p>",
        list_id=news.id,
        author="test",
    )
    campaigns.send(campaign, author="test")
    db.session.commit()
    jobs.work(once=True)
    outbox.work(once=True)
    [received] = smtp.to("reader@example.com")

    targets = re.findall(r"<([^>]+)>", str(received.message["List-Unsubscribe"]))
    [mailto] = [urlsplit(target) for target in targets if target.startswith("mailto:")]
    assert mailto.path == INBOUND
    [subject] = parse_qs(mailto.query)["subject"]  # what a mail client fills in
    assert subject.startswith("unsubscribe ")

    # The client's mail, as its own library folds (or encodes) the long subject.
    result = pipe(runner, reply(subject, In_Reply_To=received.message["Message-ID"]))
    assert result.exit_code == 0, result.output
    assert left(contact, news, offers)


#: Pieces a mail is made of, valid and broken: headers with encoded words and bad charsets,
#: MIME parts with and without boundaries, bytes that are no UTF-8, a token-like word.
MAIL_PIECES = [
    b"Subject: unsubscribe ", b"Subject: =?utf-8?B?dW5zdWJzY3JpYmU=?= ", b"Subject: =?x?Q?=FF?=",
    b"\r\n", b"\n", b"\r\n\r\n", b" ", b"\t", b"Content-Type: multipart/mixed; boundary=b\r\n",
    b"--b\r\n", b"--b--\r\n", b"Content-Type: text/plain; charset=utf-32\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Transfer-Encoding: quoted-printable\r\n",
    b"=?", b"?=", b"=\r\n", b"k1.", b"x" * 300, b"\x00", b"\xff\xfe", b"\xc3\x28", b"From x\n",
    b"unsubscribe k1.abc.def", b"mailto:leave@example.com?subject=unsubscribe%20k1.x",
]


@given(pieces=st.lists(st.one_of(st.sampled_from(MAIL_PIECES), st.binary(max_size=40)),
                       max_size=25))
@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_bytes_piped_in_exit_0_and_change_nothing(app, runner, reader, pieces):
    # The mail server retries on 75 only; anything else it bounces. A mail it cannot make
    # sense of is answered 0 ("handled"), never with a traceback.
    contact, news, offers = reader
    result = pipe(runner, b"".join(pieces))
    assert result.exit_code == 0, (result.output, result.exception)
    assert status(contact, news) == status(contact, offers) == "subscribed"
