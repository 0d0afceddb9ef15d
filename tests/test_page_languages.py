"""Staff-written texts in each language of the page (B11): a consent's wording, with the proof
of the one read (B2), the policy statement, and the mailing lists' names.

A version carries its wording in the page's other languages, as immutable as its own. A
contact reads the consent in the page's language where there is one, and the ledger records
the digest of exactly that text; staff give the wordings on the consent's form, and a change
to any of them is a new version. The policy statement is a setting, one per language.
"""

import hashlib
import re
from html import unescape
from urllib.parse import urlsplit

import sqlalchemy as sa
from test_backoffice_auth import csrf_token
from test_backoffice_settings import based_on
from test_backoffice_settings import error_next_to
from test_backoffice_settings import settings_data
from test_changes import add_contact
from test_preferences import CONFIRM_SUBJECT
from test_preferences import client  # noqa: F401 (a fixture)
from test_preferences import deliver
from test_preferences import link_in
from test_preferences import manage_path
from test_preferences import post_page
from test_preferences import press
from test_preferences import the_mail
from test_preferences import world  # noqa: F401 (a fixture)

from portal import consent
from portal import ledger
from portal import lists
from portal import settings
from portal import unsubscribe
from portal.catalogue import CatalogueEdit
from portal.catalogue import add_list
from portal.choices import forget_catalogue
from portal.consent import ConsentDefinition
from portal.db import db
from portal.lists import MailingList

GERMAN_TITLE = "Mit Partnern teilen"
GERMAN_TEXT = "Wir dürfen Ihre Angaben an unsere Partner weitergeben."
ENGLISH_TEXT = "We may share your details with our partners."


def _german_wording(setting) -> consent.ConsentVersion:
    """Give the partners consent a second version, worded in German too (not in French)."""
    version = consent.add_version(
        setting.partners, "Share with partners", ENGLISH_TEXT,
        translations={"de": (GERMAN_TITLE, GERMAN_TEXT), "fr": ("", "")},
    )
    db.session.commit()
    forget_catalogue()
    return version


def test_a_contact_reads_a_consent_in_the_pages_language_and_the_ledger_keeps_that_text(
    client, smtp, world  # noqa: F811
):
    version = _german_wording(world)
    assert version.translations == {"de": {
        "title": GERMAN_TITLE, "text": GERMAN_TEXT,
        "text_sha256": hashlib.sha256(GERMAN_TEXT.encode()).hexdigest()}}
    lena = add_contact("lena@example.com", first_name="Lena", language="de")
    marie = add_contact("marie@example.com", first_name="Marie", language="fr")
    db.session.commit()

    german = unescape(client.get(manage_path(lena)).text)
    assert f"<legend>{GERMAN_TITLE}</legend>" in german and GERMAN_TEXT in german
    assert ENGLISH_TEXT not in german
    # A consent without a German wording shows its own to her; French has none at all.
    assert "We may record when you open our emails." in german
    for other in (world.ada, marie):
        page = unescape(client.get(manage_path(other)).text)
        assert ENGLISH_TEXT in page and GERMAN_TEXT not in page

    post_page(client, manage_path(lena), choose={"consent:partners": "yes"})
    deliver()
    confirmation = the_mail(smtp, lena, "Bitte bestätigen Sie Ihre Auswahl")
    assert f"Einwilligung erteilen: {GERMAN_TITLE}" in unescape(
        client.get(link_in(confirmation, "c")).text)
    press(client, link_in(confirmation, "c"))

    (event,) = [e for e in ledger.history(lena.public_id) if e.subject_ref == "partners"]
    assert (event.action, event.language, event.text_version) == ("granted", "de", 2)
    assert event.text_sha256 == hashlib.sha256(GERMAN_TEXT.encode()).hexdigest()
    assert event.text_sha256 != version.text_sha256
    assert ledger.verify().ok


def test_an_english_contact_granting_the_same_version_records_its_own_wording(
    client, smtp, world  # noqa: F811
):
    version = _german_wording(world)
    ada = world.ada
    post_page(client, manage_path(ada), choose={"consent:partners": "yes"})
    deliver()
    press(client, link_in(the_mail(smtp, ada, CONFIRM_SUBJECT), "c"))
    (event,) = [e for e in ledger.history(ada.public_id) if e.subject_ref == "partners"]
    assert (event.language, event.text_sha256) == ("en", version.text_sha256)


def test_a_versions_wordings_cannot_be_edited(app, world):  # noqa: F811
    version = _german_wording(world)
    version.translations = {"de": {"title": "x", "text": "y", "text_sha256": "z"}}
    try:
        db.session.flush()
        raise AssertionError("an edited wording was saved")
    except consent.ConsentError as error:
        assert "cannot be edited" in str(error)
    db.session.rollback()


def _wordings(data: dict, **given: tuple[str, str]) -> dict:
    """Add the form's wording rows, one per language of the page, filled as given."""
    for number, language in enumerate(("en", "de", "fr", "ja")):
        title, text = given.get(language, ("", ""))
        data.update({f"wordings-{number}-language": language,
                     f"wordings-{number}-title": title, f"wordings-{number}-text": text})
    return data


def _new_consent(admin_client, **given) -> tuple:
    page = admin_client.get("/staff/settings/consents/new")
    return page, admin_client.post("/staff/settings/consents/new", data=_wordings({
        "csrf_token": csrf_token(page.text), "kind": "custom", "title": "Share with partners",
        "text": ENGLISH_TEXT, "condition-combine": "all",
    }, **given))


def test_staff_give_a_consent_its_wording_in_each_language(admin_client):
    page, answer = _new_consent(admin_client, de=(GERMAN_TITLE, GERMAN_TEXT))
    for label in ("Title in English", "Title in German", "Text in French", "Text in Japanese"):
        assert label in page.text
    assert answer.status_code == 303
    definition = db.session.scalar(sa.select(ConsentDefinition))
    assert definition.current_version.wording("de") == (
        GERMAN_TITLE, GERMAN_TEXT, hashlib.sha256(GERMAN_TEXT.encode()).hexdigest())
    assert definition.current_version.wording("fr")[0] == "Share with partners"

    # The form shows them again; a change to the German text alone is a new version.
    edit_url = f"/staff/settings/consents/{definition.id}"
    page = admin_client.get(edit_url)
    assert f'value="{GERMAN_TITLE}"' in page.text
    newer = "Wir dürfen Ihren Namen an unsere Partner weitergeben."
    answer = admin_client.post(edit_url, data=_wordings({
        "csrf_token": csrf_token(page.text), "based_on": based_on(page.text),
        "title": "Share with partners", "text": ENGLISH_TEXT, "condition-combine": "all",
    }, de=(GERMAN_TITLE, newer), ja=("提携先への情報提供", "提携先にお名前を提供します。")))
    assert answer.status_code == 303
    db.session.refresh(definition)
    assert [v.number for v in definition.versions] == [1, 2]
    assert definition.versions[0].wording("de")[1] == GERMAN_TEXT  # what was read stays
    assert definition.current_version.wording("de")[1] == newer
    assert definition.current_version.wording("ja")[0] == "提携先への情報提供"
    edit = db.session.scalar(sa.select(CatalogueEdit).order_by(CatalogueEdit.id.desc()))
    assert edit.changes["text (de)"] == [GERMAN_TEXT, newer]
    assert edit.changes["title (ja)"] == [None, "提携先への情報提供"]
    assert edit.changes["version"] == [None, 2]
    history = unescape(admin_client.get(edit_url).text)
    assert '<p lang="ja"><strong>ja</strong>: 提携先への情報提供' in history


def test_a_half_given_or_incomplete_wording_is_refused_beside_its_field(admin_client):
    _page, answer = _new_consent(admin_client, fr=("Partager avec des partenaires", ""))
    assert answer.status_code == 200
    assert "Give both a title and a text in this language, or neither." in (
        error_next_to(answer.text, "wordings-2-text") or "")
    assert 'value="Partager avec des partenaires"' in answer.text  # nothing typed is lost

    # A made-up form naming one language only is an incomplete form, not a removal.
    page = admin_client.get("/staff/settings/consents/new")
    answer = admin_client.post("/staff/settings/consents/new", data={
        "csrf_token": csrf_token(page.text), "kind": "custom", "title": "Share",
        "text": ENGLISH_TEXT, "condition-combine": "all", "wordings-0-language": "de",
        "wordings-0-title": GERMAN_TITLE, "wordings-0-text": GERMAN_TEXT,
    })
    assert answer.status_code == 200
    assert "This form is incomplete" in answer.text
    assert db.session.scalar(sa.select(sa.func.count()).select_from(ConsentDefinition)) == 0


def test_a_form_without_wordings_keeps_them(admin_client):
    _new_consent(admin_client, de=(GERMAN_TITLE, GERMAN_TEXT))
    definition = db.session.scalar(sa.select(ConsentDefinition))
    edit_url = f"/staff/settings/consents/{definition.id}"
    page = admin_client.get(edit_url)
    # As a form from before wordings per language posts: the condition changes, nothing else.
    answer = admin_client.post(edit_url, data={
        "csrf_token": csrf_token(page.text), "based_on": based_on(page.text),
        "title": "Share with partners", "text": ENGLISH_TEXT, "condition-combine": "all",
        "default_selected": "y",
    })
    assert answer.status_code == 303
    db.session.refresh(definition)
    assert len(definition.versions) == 1 and definition.default_selected
    assert definition.current_version.wording("de")[0] == GERMAN_TITLE


def test_the_preview_shows_a_contact_the_wording_of_their_language(admin_client, world):  # noqa: F811
    _german_wording(world)
    lena = add_contact("lena@example.com", language="de")
    db.session.commit()
    frame = admin_client.get("/staff/settings/preview/page",
                             query_string={"contact": lena.email})
    assert frame.status_code == 200
    shown = unescape(frame.text)
    assert GERMAN_TEXT in shown and ENGLISH_TEXT not in shown
    assert re.search(r'<html lang="de"', shown)


def _policies(**given: str) -> dict:
    """The settings form's rows of the policy statement, one per language of the page."""
    data = {}
    for number, language in enumerate(("en", "de", "fr", "ja")):
        data[f"policy_wordings-{number}-language"] = language
        data[f"policy_wordings-{number}-html"] = given.get(language, "")
    return data


def test_the_policy_statement_is_read_in_the_pages_language(client, admin_client, world):  # noqa: F811
    page = admin_client.get("/staff/settings")
    assert "Policy statement in German" in page.text
    answer = admin_client.post("/staff/settings", data={
        **settings_data(csrf_token(page.text)),
        **_policies(de="<p>Wir nutzen Ihre Daten nur so, wie Sie es erlauben.</p>"
                       "<script>alert(1)</script>"),
    })
    assert answer.status_code == 303
    assert settings.values()["policy_translations"] == {
        "de": "<p>Wir nutzen Ihre Daten nur so, wie Sie es erlauben.</p>"}
    history = unescape(admin_client.get("/staff/settings/history").text)
    assert ("Policy statement in other languages: <span class=\"before\"></span> → "
            "<span class=\"after\">de: <p>Wir nutzen") in history

    lena = add_contact("lena@example.com", language="de")
    db.session.commit()
    forget_catalogue()
    german = unescape(client.get(manage_path(lena)).text)
    assert "Wir nutzen Ihre Daten nur so, wie Sie es erlauben." in german
    assert "We use your data only as you allow." not in german and "alert(1)" not in german
    english = unescape(client.get(manage_path(world.ada)).text)
    assert "We use your data only as you allow." in english

    # The form shows them again; one that leaves a language out is an incomplete form.
    page = admin_client.get("/staff/settings")
    assert "Wir nutzen Ihre Daten" in unescape(page.text)
    partial = _policies(fr="<p>Nous utilisons vos données.</p>")
    del partial["policy_wordings-3-language"], partial["policy_wordings-3-html"]
    answer = admin_client.post("/staff/settings",
                               data={**settings_data(csrf_token(page.text)), **partial})
    assert answer.status_code == 200 and "This form is incomplete" in answer.text
    # One from before statements per language keeps the saved ones.
    answer = admin_client.post("/staff/settings", data=settings_data(
        csrf_token(page.text), footer_html="<p>Our footer.</p>"))
    assert answer.status_code == 303
    assert settings.values()["policy_translations"]["de"].startswith("<p>Wir nutzen")


GERMAN_NEWS = "Nachrichten"


def _german_news(world) -> None:  # noqa: F811
    world.news.translations = {"de": {"name": GERMAN_NEWS,
                                      "description": "Einmal im Monat, was neu ist."}}
    db.session.commit()
    forget_catalogue()


def test_a_contact_reads_the_lists_names_in_the_pages_language(client, smtp, world):  # noqa: F811
    _german_news(world)
    lena = add_contact("lena@example.com", language="de")
    lists.set_subscription(lena, world.news, True, method="test", actor="test")
    db.session.commit()

    german = unescape(client.get(manage_path(lena)).text)
    assert f'<label for="list-news">{GERMAN_NEWS}</label>' in german
    assert "Einmal im Monat, was neu ist." in german
    assert '<label for="list-news">Newsletter</label>' in unescape(
        client.get(manage_path(world.ada)).text)
    # The campaign's unsubscribe link, its leave page and the one-click answer name it so.
    landing = unescape(client.get(f"{manage_path(lena)}?list=news").text)
    assert f"{GERMAN_NEWS}" in re.search(r'<h2 id="leave-heading">(.*?)</h2>', landing).group(1)
    leave = unescape(client.get(urlsplit(unsubscribe.one_click_url(lena, world.news)).path).text)
    assert GERMAN_NEWS in leave and "Newsletter" not in leave
    answer = client.post(urlsplit(unsubscribe.one_click_url(lena, world.news)).path,
                         data={"List-Unsubscribe": "One-Click"})
    assert answer.status_code == 200 and GERMAN_NEWS in unescape(answer.text)


def _list_rows(**given: tuple[str, str]) -> dict:
    data = {}
    for number, language in enumerate(("en", "de", "fr", "ja")):
        name, description = given.get(language, ("", ""))
        data.update({f"wordings-{number}-language": language, f"wordings-{number}-name": name,
                     f"wordings-{number}-description": description})
    return data


def test_staff_name_a_list_in_each_language(admin_client):
    page = admin_client.get("/staff/settings/lists/new")
    assert "Name in German" in page.text and "Description in Japanese" in page.text
    answer = admin_client.post("/staff/settings/lists/new", data={
        "csrf_token": csrf_token(page.text), "based_on": based_on(page.text),
        "name": "Newsletter", "public": "y",
        **_list_rows(de=(GERMAN_NEWS, ""), fr=("", "Une fois par mois.")),
    })
    assert answer.status_code == 200  # a French description without its name
    assert "Give the name in this language too" in (
        error_next_to(answer.text, "wordings-2-name") or "")
    assert db.session.scalar(sa.select(sa.func.count()).select_from(MailingList)) == 0

    answer = admin_client.post("/staff/settings/lists/new", data={
        "csrf_token": csrf_token(page.text), "based_on": based_on(page.text),
        "name": "Newsletter", "public": "y", **_list_rows(de=(GERMAN_NEWS, "<b>Monatlich</b>")),
    })
    assert answer.status_code == 303
    news = db.session.scalar(sa.select(MailingList))
    assert news.wording("de") == (GERMAN_NEWS, "Monatlich")  # markup removed
    assert news.wording("ja") == ("Newsletter", "")

    edit_url = f"/staff/settings/lists/{news.id}"
    page = admin_client.get(edit_url)
    assert f'value="{GERMAN_NEWS}"' in page.text
    answer = admin_client.post(edit_url, data={
        "csrf_token": csrf_token(page.text), "based_on": based_on(page.text),
        "name": "Newsletter", "public": "y", **_list_rows(de=(GERMAN_NEWS, "Jeden Monat.")),
    })
    assert answer.status_code == 303
    db.session.refresh(news)
    assert news.wording("de")[1] == "Jeden Monat."
    edit = db.session.scalar(sa.select(CatalogueEdit).order_by(CatalogueEdit.id.desc()))
    assert edit.changes == {"description (de)": ["Monatlich", "Jeden Monat."]}


def test_a_list_made_without_other_languages_shows_its_own_name(app):
    news = add_list("Newsletter", "Monthly.", public=True, author="test")
    assert news.translations is None and news.wording("de") == ("Newsletter", "Monthly.")
