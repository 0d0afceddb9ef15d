"""Staff edits of consents and lists, each logged; rebasing a stale settings edit; counts and
preview contacts."""

import pytest

from portal import catalogue
from portal import contacts
from portal import settings
from portal.db import db


def test_plain_text_drops_markup_and_keeps_ordinary_characters(app):
    assert catalogue.plain_text("<b>Terms</b> & <script>alert(1)</script>conditions") == (
        "Terms & conditions"
    )
    assert catalogue.plain_text("  a < b  ") == "a < b"


def test_editing_a_consent_adds_a_version_only_when_the_wording_changes(app):
    definition = catalogue.add_consent(
        "custom",
        "Partners",
        "Share with partners",
        field=None,
        display_condition=None,
        default_selected=False,
        author="staff:1",
    )
    stamp = catalogue.last_edit("consent", definition.id)
    edit = catalogue.edit_consent(
        definition,
        title="Partners",
        text="Share with partners",
        material=True,
        display_condition={"field": "region", "op": "equals", "value": "EU"},
        default_selected=False,
        author="staff:1",
        based_on=stamp,
    )
    assert len(definition.versions) == 1
    assert edit.changes == {
        "display_condition": [None, {"field": "region", "op": "equals", "value": "EU"}]
    }
    edit = catalogue.edit_consent(
        definition,
        title="Partners",
        text="Share my name with partners",
        material=True,
        display_condition=definition.display_condition,
        default_selected=False,
        author="staff:1",
        based_on=edit.id,
    )
    assert [v.number for v in definition.versions] == [1, 2]
    assert definition.current_version.material is True
    assert edit.changes["version"] == [None, 2]
    assert (
        catalogue.edit_consent(
            definition,
            title="Partners",
            text="Share my name with partners",
            material=False,
            display_condition=definition.display_condition,
            default_selected=False,
            author="staff:1",
            based_on=edit.id,
        )
        is None
    )


def test_an_edit_begun_before_another_is_refused_with_the_other(app):
    mailing_list = catalogue.add_list("News", "", public=True, author="staff:1")
    stamp = catalogue.last_edit("list", mailing_list.id)
    catalogue.edit_list(
        mailing_list,
        name="News",
        description="Monthly",
        public=True,
        author="staff:2",
        based_on=stamp,
    )
    with pytest.raises(catalogue.StaleEdit) as stale:
        catalogue.edit_list(
            mailing_list,
            name="Newsletter",
            description="",
            public=True,
            author="staff:1",
            based_on=stamp,
        )
    assert stale.value.edits[0].created_by == "staff:2"


def test_rebasing_keeps_my_changes_and_takes_theirs(app):
    settings.save(
        {"footer_html": "<p>Theirs</p>", "campaign_policy": "double_single_user"},
        based_on=0,
        author="staff:2",
    )
    mine = {**settings.DEFAULTS, "footer_html": "<p>Mine</p>", "policy_html": "<p>P</p>"}
    merged, theirs, both = catalogue.rebase_settings(mine, 0)
    assert merged["footer_html"] == "<p>Mine</p>"
    assert merged["policy_html"] == "<p>P</p>"
    assert merged["campaign_policy"] == "double_single_user"
    assert set(theirs) == {"footer_html", "campaign_policy"}
    assert both == ["footer_html"]


def test_counts_skip_erased_contacts(app):
    contacts.add_contact("ada@example.com", region="EU", method="staff", actor="t")
    erased = contacts.add_contact("bea@example.com", region="EU", method="staff", actor="t")
    erased.erased_at = erased.created_at
    db.session.flush()
    assert catalogue.count_matching({"field": "region", "op": "equals", "value": "EU"}) == 1
    assert catalogue.count_matching(None) == 1
