"""Engagement tracking (P6, R1): a real campaign to the test SMTP server, its links followed as
a mail client would. Opens and clicks are recorded only for contacts who granted tracking, and
stop the moment they withdraw it; a click always leads on to its address; a token that is not
ours gets the 404 page, never a redirect."""

import re
import time
from datetime import timedelta
from html import unescape

import pytest
import sqlalchemy as sa
from test_campaigns import add
from test_campaigns import deliver_all
from test_campaigns import draft
from test_preferences import manage_path
from test_preferences import post_page

from portal import campaigns
from portal import consent
from portal import erasure
from portal import lists
from portal import tracking
from portal.contacts import OptIn
from portal.db import db
from portal.db import utcnow
from portal.links import make_token
from portal.tracking import EngagementEvent

BASE = "https://prefs.example.test"
SHOP = "https://shop.example.org/sale?colour=red&size=m"
HTML = (
    '<p>Hello {{ first_name }}</p><p><a href="' + SHOP.replace("&", "&amp;") + '">The sale</a> '
    '<a href="mailto:shop@example.org">Write to us</a> '
    '<a href="{{ unsubscribe_url }}">Leave this list</a></p>'
)
TEXT = "Hello {{ first_name }}, the sale: " + SHOP + "\n"


@pytest.fixture
def sent(app, smtp):
    """A campaign with a web link sent to Ada, who granted tracking, and Bob, who did not."""
    news = lists.create_list("news", "Newsletter")
    tracking_consent = consent.define("tracking", "tracking", "Engagement tracking",
                                      "We may record when you open our emails.")
    ada = add("ada@example.test", OptIn.DOUBLE, news, first_name="Ada")
    bob = add("bob@example.test", OptIn.DOUBLE, news, first_name="Bob")
    ada.language = bob.language = "en"
    consent.decide(ada, tracking_consent.current_version, True, method="test", actor="test")
    campaign = draft(news, text_body=TEXT, html_body=HTML)
    campaigns.send(campaign, author="test")
    db.session.commit()
    deliver_all()
    return {"ada": ada, "bob": bob, "campaign": campaign, "news": news,
            "consent": tracking_consent}


def html_to(smtp, contact) -> str:
    (received,) = smtp.to(contact.email)
    return received.message.get_body(preferencelist=("html",)).get_content()


def text_to(smtp, contact) -> str:
    (received,) = smtp.to(contact.email)
    return received.message.get_body(preferencelist=("plain",)).get_content()


def tracking_links(html: str) -> dict[str, list[str]]:
    """Return the paths of the click links and of the pixel in a mail's HTML."""
    clicks = [unescape(u).removeprefix(BASE) for u in re.findall(r'href="([^"]*/t/c/[^"]*)"', html)]
    pixels = [unescape(u).removeprefix(BASE) for u in re.findall(r'src="([^"]*/t/o/[^"]*)"', html)]
    return {"clicks": clicks, "pixels": pixels}


def events(contact) -> list[tuple[str, str | None]]:
    return [
        (event.kind, event.url)
        for event in db.session.scalars(
            sa.select(EngagementEvent).where(EngagementEvent.contact_id == contact.id)
            .order_by(EngagementEvent.id)
        )
    ]


def test_only_the_mail_of_a_contact_who_granted_tracking_carries_tracking(sent, smtp):
    ada_html, bob_html = html_to(smtp, sent["ada"]), html_to(smtp, sent["bob"])
    found = tracking_links(ada_html)
    assert len(found["clicks"]) == 1 and len(found["pixels"]) == 1
    assert SHOP.replace("&", "&amp;") not in ada_html  # the shop link goes through the redirect
    # Links that are not to the web, and the portal's own links, are left alone.
    assert 'href="mailto:shop@example.org"' in ada_html
    assert re.search(rf'href="{re.escape(BASE)}/o/[^"]+"', ada_html)
    # Bob never granted it: his mail has the plain link and no pixel.
    assert tracking_links(bob_html) == {"clicks": [], "pixels": []}
    assert SHOP.replace("&", "&amp;") in bob_html
    # The text part is never instrumented.
    assert "/t/" not in text_to(smtp, sent["ada"]) and SHOP in text_to(smtp, sent["ada"])


def test_an_open_and_a_click_are_recorded_for_a_contact_who_granted_tracking(
    client, sent, smtp
):
    found = tracking_links(html_to(smtp, sent["ada"]))
    pixel = client.get(found["pixels"][0])
    assert pixel.status_code == 200 and pixel.mimetype == "image/gif"
    assert pixel.data.startswith(b"GIF89a") and pixel.headers["Cache-Control"] == "no-store"
    click = client.get(found["clicks"][0])
    assert click.status_code == 302 and click.headers["Location"] == SHOP
    # Its own policy, alone: the portal's default (same-origin) does not come beside it.
    assert click.headers.getlist("Referrer-Policy") == ["no-referrer"]
    assert "Set-Cookie" not in click.headers and "Set-Cookie" not in pixel.headers
    assert events(sent["ada"]) == [("open", None), ("click", SHOP)]
    event = db.session.scalars(sa.select(EngagementEvent)
                               .where(EngagementEvent.contact_id == sent["ada"].id)).first()
    assert event.campaign_id == sent["campaign"].id
    assert tracking.campaign_counts(sent["campaign"].id) == {"opened": 1, "clicked": 1}


def test_a_scanners_head_records_nothing(client, sent, smtp):
    found = tracking_links(html_to(smtp, sent["ada"]))
    assert client.head(found["pixels"][0]).status_code == 200
    assert client.head(found["clicks"][0]).status_code == 302
    assert events(sent["ada"]) == []


def test_withdrawing_tracking_on_the_page_stops_it_at_once_and_undo_resumes_it(
    client, sent, smtp
):
    ada = sent["ada"]
    found = tracking_links(html_to(smtp, ada))
    client.get(found["pixels"][0])
    withdrawn = post_page(client, manage_path(ada), choose={"consent:tracking": "no"})
    assert withdrawn.status_code == 303
    # A click still leads on to the shop; neither it nor the open is recorded.
    assert client.get(found["clicks"][0]).headers["Location"] == SHOP
    client.get(found["pixels"][0])
    assert events(ada) == [("open", None)]
    assert not tracking.may_track(ada)
    # The undo link puts the consent back, and with it the recording.
    deliver_all()
    notice = [m.message for m in smtp.to(ada.email)
              if m.message["Subject"] == "Your choices were saved"]
    (undo,) = re.findall(rf"{re.escape(BASE)}(/u/\S+)", notice[0].get_body(
        preferencelist=("plain",)).get_content())
    page = client.get(undo)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    assert client.post(undo, data={"csrf_token": token}).status_code == 200
    client.get(found["clicks"][0])
    assert events(ada) == [("open", None), ("click", SHOP)]


@pytest.mark.parametrize("lock", ["processing_stopped_at", "erasure_requested_at"])
def test_stopped_processing_or_an_erasure_request_stops_tracking(client, sent, smtp, lock):
    ada = sent["ada"]
    found = tracking_links(html_to(smtp, ada))
    setattr(ada, lock, utcnow())
    db.session.commit()
    assert client.get(found["clicks"][0]).headers["Location"] == SHOP
    client.get(found["pixels"][0])
    assert events(ada) == []


def test_a_click_token_too_old_or_revoked_still_leads_on_but_records_nothing(
    client, sent, smtp, monkeypatch
):
    ada = sent["ada"]
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() - 366 * 24 * 3600)
    old = make_token("track", ada, m=sent["campaign"].id, u=SHOP)
    monkeypatch.setattr(time, "time", real_time)
    assert client.get(f"/t/c/{old}").headers["Location"] == SHOP
    # Raising the link version (an email change, say) revokes the contact's links.
    found = tracking_links(html_to(smtp, ada))
    ada.link_version += 1
    db.session.commit()
    assert client.get(found["clicks"][0]).headers["Location"] == SHOP
    client.get(found["pixels"][0])
    assert events(ada) == []


def _flip(token: str) -> str:
    return token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]


def test_tokens_that_are_not_ours_get_the_404_page_and_never_a_redirect(client, sent, smtp):
    ada = sent["ada"]
    found = tracking_links(html_to(smtp, ada))
    click_token = found["clicks"][0].removeprefix("/t/c/")
    bad = {
        "tampered": _flip(click_token),
        "another purpose": make_token("manage", ada),
        "unknown key": "k9." + click_token.partition(".")[2],
        "garbage": "not-a-token",
        "an open token": found["pixels"][0].removeprefix("/t/o/"),
    }
    for fault, token in bad.items():
        response = client.get(f"/t/c/{token}")
        assert response.status_code == 404, fault
        assert "Location" not in response.headers, fault
        assert "Page not found" in response.text, fault
    # The pixel answers every token with the same image and records nothing for a bad one.
    for token in (_flip(found["pixels"][0].removeprefix("/t/o/")), click_token, "x"):
        response = client.get(f"/t/o/{token}")
        assert response.status_code == 200 and response.data.startswith(b"GIF89a")
    assert client.post(found["clicks"][0]).status_code == 405
    assert events(ada) == []


def test_recorded_engagement_goes_when_the_undo_window_of_a_withdrawal_closes(
    client, sent, smtp, runner
):
    ada, bob = sent["ada"], sent["bob"]
    consent.decide(bob, sent["consent"].current_version, True, method="test", actor="test")
    db.session.add(EngagementEvent(contact_id=bob.id, kind="open"))
    client.get(tracking_links(html_to(smtp, ada))["pixels"][0])
    consent.decide(ada, sent["consent"].current_version, False, method="test", actor="test")
    db.session.commit()
    window = timedelta(hours=48)
    # Within the window an undo could still restore the consent: nothing is deleted yet.
    assert tracking.purge_withdrawn(window) == 0
    assert tracking.purge_withdrawn(window, now=utcnow() + timedelta(hours=49)) == 1
    db.session.commit()
    assert events(ada) == [] and events(bob) == [("open", None)]
    # The scheduled command does the same, and says what it did.
    result = runner.invoke(args=["consent", "purge"])
    assert result.exit_code == 0 and "deleted 0 engagement event(s)" in result.output


def test_erasure_deletes_the_recorded_engagement_and_says_so(client, sent, smtp):
    ada = sent["ada"]
    client.get(tracking_links(html_to(smtp, ada))["pixels"][0])
    assert events(ada) == [("open", None)]
    log = erasure.erase(ada, actor="test")
    db.session.commit()
    assert events(ada) == []
    assert {"item": "engagement", "detail": "1"} in log.erased


def test_staff_see_engagement_on_the_record_and_the_campaign(agent_client, client, sent, smtp):
    ada, bob = sent["ada"], sent["bob"]
    found = tracking_links(html_to(smtp, ada))
    client.get(found["pixels"][0])
    client.get(found["clicks"][0])
    record = agent_client.get(f"/staff/contacts/{ada.public_id}")
    assert "this contact granted tracking" in record.text
    assert "Opens: 1, clicks: 1." in record.text and f"clicked {SHOP}".replace("&", "&amp;") in (
        record.text
    )
    other = agent_client.get(f"/staff/contacts/{bob.public_id}")
    assert "this contact has not granted tracking" in other.text and "Opens:" not in other.text
    page = agent_client.get(f"/staff/campaigns/{sent['campaign'].id}")
    assert re.search(r"Opened, among contacts who allow tracking: <strong>1</strong>", page.text)
    assert re.search(r"Clicked, among contacts who allow tracking: <strong>1</strong>", page.text)


def test_where_tracking_is_asked_for_in_parts_withdrawing_one_stops_all_of_it(
    client, sent, smtp
):
    ada = sent["ada"]
    clicks = consent.define("click-tracking", "tracking", "Click tracking",
                            "We may record which links you follow.")
    consent.decide(ada, clicks.current_version, True, method="test", actor="test")
    db.session.commit()
    assert tracking.may_track(ada) and tracking.consenting([ada]) == {ada.id}
    consent.decide(ada, clicks.current_version, False, method="test", actor="test")
    db.session.commit()
    assert not tracking.may_track(ada) and tracking.consenting([ada]) == set()
    found = tracking_links(html_to(smtp, ada))
    assert client.get(found["clicks"][0]).headers["Location"] == SHOP
    assert events(ada) == []
    # A consent no longer offered (retired) neither allows nor stops it.
    clicks.retired_at = utcnow()
    db.session.commit()
    assert tracking.may_track(ada)


def test_hits_past_the_quiet_limit_are_answered_alike_but_not_recorded(
    client, sent, smtp, monkeypatch
):
    monkeypatch.setattr(tracking, "PER_CONTACT", "2/hour")  # 120 an hour in production
    found = tracking_links(html_to(smtp, sent["ada"]))
    answers = [client.get(found["clicks"][0]) for _ in range(3)]
    assert [a.status_code for a in answers] == [302, 302, 302]
    assert {a.headers["Location"] for a in answers} == {SHOP}
    assert events(sent["ada"]) == [("click", SHOP), ("click", SHOP)]
