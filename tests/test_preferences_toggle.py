"""The preference page's two ways of saving, and how it tells a contact each consent was given
(issue 4 items 2 and 8; P2, P4, P10).

With htmx, a withdrawal's control saves the form as soon as it changes: that save applies the
withdrawals only, and whatever waits for a confirmation by email stays set on the page until
the contact presses "Save my choices". Without JavaScript the button sends everything at once.
"""

import re
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
from test_changes import EU
from test_changes import add_contact
from test_changes import configure
from test_changes import state
from test_preferences import CONFIRM_SUBJECT
from test_preferences import HTMX
from test_preferences import NOTICE_SUBJECT
from test_preferences import deliver
from test_preferences import flashes
from test_preferences import link_in
from test_preferences import mail
from test_preferences import manage_path
from test_preferences import press
from test_preferences import read_form
from test_preferences import text_of

from portal import consent
from portal import lists
from portal.changes import PendingChange
from portal.contacts import OptIn
from portal.db import db

WITHDRAWN = "Your changes are saved. We sent you an email with a link to undo them."
HELD = ("Anything you give or ask for is not sent yet: press “Save my choices” and we will "
        "email you a link to confirm it.")
BUTTON = {"save": "1"}


@pytest.fixture
def world(app) -> SimpleNamespace:
    """A page open to the EU with two lists and two consents; Ada is on the newsletter."""
    configure(audience_rule=EU, policy_html="<p>We use your data only as you allow.</p>")
    news = lists.create_list("news", "Newsletter")
    lists.create_list("offers", "Offers")
    tracking = consent.define("tracking", "tracking", "Engagement tracking",
                              "We may record when you open our emails.")
    consent.define("partners", "custom", "Share with partners",
                   "We may share your details with our partners.")
    ada = add_contact("ada@example.com", first_name="Ada", language="en",
                      opt_in=OptIn.SINGLE_USER)
    lists.set_subscription(ada, news, True, method="test", actor="test")
    db.session.commit()
    return SimpleNamespace(ada=ada, tracking=tracking)


def pending_of(contact) -> list[PendingChange]:
    return list(db.session.scalars(
        sa.select(PendingChange).where(PendingChange.contact_id == contact.id,
                                       PendingChange.status == "pending")))


def subjects(smtp, contact) -> list[str]:
    return [received.message["Subject"] for received in smtp.to(contact.email)]


def joined_offers_and_left_news(client, path: str) -> dict:
    """Return the form as the contact leaves it: Offers and the partners consent ticked, the
    newsletter unticked."""
    _action, form = read_form(client.get(path).text)
    form.pop("list:news")
    return {**form, "list:offers": "on", "consent:partners": "yes"}


# --- A toggle saves withdrawals only ------------------------------------------------------------


def test_an_htmx_toggle_saves_the_withdrawal_and_keeps_the_grants_on_the_page(
    client, smtp, world
):
    ada = world.ada
    path = manage_path(ada)
    form = joined_offers_and_left_news(client, path)

    response = client.post(path, data=form, headers=HTMX)

    assert response.status_code == 200
    assert "<html" not in response.text
    assert state(ada)["lists"] == {"news": "unsubscribed"}
    assert "partners" not in state(ada)["consents"]
    assert pending_of(ada) == []
    deliver()
    assert subjects(smtp, ada) == [NOTICE_SUBJECT]
    # The swapped form is as the contact left it, and says the rest waits for the button.
    _action, shown = read_form(response.text)
    assert "list:news" not in shown
    assert shown["list:offers"] == "on"
    assert shown["consent:partners"] == "yes"
    assert re.findall(r"<p>(.*?)</p>", flashes(response)) == [WITHDRAWN, HELD]
    assert "Nothing changed" not in response.text

    # The button sends them: one confirmation listing both.
    response = client.post(path, data={**shown, **BUTTON}, headers=HTMX)
    assert response.status_code == 200
    assert "Check your inbox" in flashes(response)
    assert HELD not in response.text
    deliver()
    assert subjects(smtp, ada) == [NOTICE_SUBJECT, CONFIRM_SUBJECT]
    (confirmation,) = mail(smtp, ada, CONFIRM_SUBJECT)
    assert "Subscribe to Offers" in text_of(confirmation)
    assert "Give consent: Share with partners" in text_of(confirmation)
    # Nothing granted until the link in the mail is used.
    assert state(ada)["lists"] == {"news": "unsubscribed"}
    press(client, link_in(confirmation, "c"))
    assert state(ada)["lists"] == {"news": "unsubscribed", "offers": "subscribed"}
    assert state(ada)["consents"]["partners"] == ("granted", 1)


def test_an_htmx_toggle_never_asks_for_a_default_selected_consent(client, smtp, world):
    ada = world.ada
    consent.define("research", "custom", "Take part in research",
                   "We may invite you to surveys.", default_selected=True)
    db.session.commit()
    path = manage_path(ada)
    _action, form = read_form(client.get(path).text)
    assert form["consent:research"] == "yes"
    form.pop("list:news")

    response = client.post(path, data=form, headers=HTMX)

    assert state(ada)["lists"] == {"news": "unsubscribed"}
    assert pending_of(ada) == []
    deliver()
    assert subjects(smtp, ada) == [NOTICE_SUBJECT]
    # The default still pre-positions the control; the contact ticked nothing themselves.
    assert read_form(response.text)[1]["consent:research"] == "yes"
    assert re.findall(r"<p>(.*?)</p>", flashes(response)) == [WITHDRAWN]


def test_an_htmx_toggle_holds_back_stopping_processing_and_erasure(client, smtp, world):
    ada = world.ada
    path = manage_path(ada)
    _action, form = read_form(client.get(path).text)
    form.pop("list:news")

    response = client.post(path, data={**form, "stop_processing": "on", "erasure": "on"},
                           headers=HTMX)

    db.session.refresh(ada)
    assert ada.processing_stopped_at is None and ada.erasure_requested_at is None
    assert pending_of(ada) == []
    _action, shown = read_form(response.text)
    assert shown["stop_processing"] == "on" and shown["erasure"] == "on"
    assert HELD in flashes(response)


def test_an_htmx_toggle_that_withdraws_nothing_says_what_still_waits(client, smtp, world):
    path = manage_path(world.ada)
    _action, form = read_form(client.get(path).text)
    before = state(world.ada)

    response = client.post(path, data={**form, "list:offers": "on"}, headers=HTMX)

    assert state(world.ada) == before
    assert re.findall(r"<p>(.*?)</p>", flashes(response)) == [HELD]
    deliver()
    assert smtp.to(world.ada.email) == []


def test_a_grant_already_waiting_for_its_link_is_not_said_to_wait_for_the_button(
    client, smtp, world
):
    ada = world.ada
    path = manage_path(ada)
    _action, form = read_form(client.get(path).text)
    client.post(path, data={**form, "list:offers": "on", **BUTTON}, headers=HTMX)
    _action, form = read_form(client.get(path).text)
    form.pop("list:news")

    response = client.post(path, data={**form, "list:offers": "on"}, headers=HTMX)

    assert re.findall(r"<p>(.*?)</p>", flashes(response)) == [WITHDRAWN]
    deliver()
    assert subjects(smtp, ada).count(CONFIRM_SUBJECT) == 1


def test_a_stale_toggle_lists_everything_the_form_asked_for(client, world):
    path = manage_path(world.ada)
    form = joined_offers_and_left_news(client, path)
    # Another tab withdraws the tracking consent meanwhile.
    _action, other = read_form(client.get(path).text)
    client.post(path, data={**other, "consent:tracking": "no", **BUTTON})

    response = client.post(path, data=form, headers=HTMX)

    assert response.status_code == 200
    assert "Nothing was saved" in response.text
    for line in ("Unsubscribe from Newsletter", "Subscribe to Offers",
                 "Give consent: Share with partners"):
        assert line in response.text
    assert state(world.ada)["lists"] == {"news": "subscribed"}


# --- The button, and no JavaScript: everything at once, as before -------------------------------


@pytest.mark.parametrize("how", ["htmx button", "plain button", "plain, no button"])
def test_the_button_or_a_plain_post_withdraws_at_once_and_asks_to_confirm_the_rest(
    client, smtp, world, how
):
    ada = world.ada
    path = manage_path(ada)
    form = joined_offers_and_left_news(client, path)
    if how != "plain, no button":  # an older page, or a script's own submit()
        form.update(BUTTON)

    response = client.post(path, data=form, headers=HTMX if how == "htmx button" else {})

    if how == "htmx button":
        assert response.status_code == 200
        notes = flashes(response)
        # The page shows things as they stand: the grants wait in the mailbox, not on the page.
        assert "list:offers" not in read_form(response.text)[1]
    else:
        assert response.status_code == 303
        notes = flashes(client.get(response.headers["Location"]))
    assert WITHDRAWN in notes
    assert "we sent a link to confirm the rest of your changes" in notes
    assert HELD not in notes
    assert state(ada)["lists"] == {"news": "unsubscribed"}
    assert len(pending_of(ada)) == 1
    deliver()
    assert subjects(smtp, ada) == [NOTICE_SUBJECT, CONFIRM_SUBJECT]
    (confirmation,) = mail(smtp, ada, CONFIRM_SUBJECT)
    assert "Subscribe to Offers" in text_of(confirmation)
    assert "Give consent: Share with partners" in text_of(confirmation)


# --- How each consent was given ----------------------------------------------------------------


def since_line(html: str, title: str) -> str:
    """Return what the page says of a consent's state, under its title."""
    block = html.split(f"{title}</legend>")[1].split("</fieldset>")[0]
    found = re.search(r'<p class="since">\s*(.*?)\s*</p>', block, re.S)
    return " ".join(found.group(1).split())


DATE = r"\d{1,2} \w{3} \d{4}|\w{3} \d{1,2}, \d{4}"


def test_the_page_says_how_each_consent_was_given(client, smtp, world):
    ada = world.ada
    path = manage_path(ada)
    # Staff record one consent; Ada gives another on her page and confirms it by email.
    consent.decide(ada, world.tracking.current_version, True, method="staff", actor="staff:1")
    db.session.commit()
    _action, form = read_form(client.get(path).text)
    client.post(path, data={**form, "consent:partners": "yes", **BUTTON})
    deliver()
    (confirmation,) = mail(smtp, ada, CONFIRM_SUBJECT)
    press(client, link_in(confirmation, "c"))

    page = client.get(path).text
    assert re.fullmatch(rf"Given on ({DATE}), recorded by our staff\.",
                        since_line(page, "Engagement tracking"))
    assert re.fullmatch(rf"Given on ({DATE}), on this page, confirmed by email\.",
                        since_line(page, "Share with partners"))

    # A withdrawal on the page says so too.
    _action, form = read_form(page)
    client.post(path, data={**form, "consent:tracking": "no"}, headers=HTMX)
    assert re.fullmatch(rf"Withdrawn on ({DATE}), on this page\.",
                        since_line(client.get(path).text, "Engagement tracking"))


def test_a_consent_given_some_way_the_page_has_no_words_for_shows_its_date_alone(client, world):
    consent.decide(world.ada, world.tracking.current_version, True, method="carrier pigeon",
                   actor="test")
    db.session.commit()
    page = client.get(manage_path(world.ada)).text
    assert re.fullmatch(rf"Given on ({DATE})\.", since_line(page, "Engagement tracking"))
    assert since_line(page, "Share with partners") == "Not asked yet."
