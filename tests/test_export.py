"""CSV export of a filtered contact list, as a job (S4, P7, B6, SECURITY.md 13)."""

import csv
import io
import re
import threading
from html import unescape

import pytest
import sqlalchemy as sa
from test_backoffice_auth import csrf_token

from portal import consent
from portal import contact_filters
from portal import contacts
from portal import export
from portal import jobs
from portal import lists
from portal.db import db


def _add(email, **options):
    return contacts.add_contact(email, method="test", actor="test", **options)


@pytest.fixture
def people(app):
    card = contacts.define_field("card_number", "Card number", sensitive=True, visible_suffix=4)
    store = consent.define("store-card", "storage", "Store my card", "We keep it.", field=card)
    tracking = consent.define("tracking", "tracking", "Tracking", "We count opens.")
    news = lists.create_list("newsletter", "Newsletter")
    ada = _add(
        "ada@example.com",
        first_name="=1+1",
        last_name="Lovelace",
        region="EU",
        phone="+44 20 7946 0000",
    )
    consent.decide(ada, store.current_version, True, method="page", actor="contact")
    contacts.set_field_value(ada, card, "4111 1111 1111 1234")
    consent.decide(ada, tracking.current_version, False, method="page", actor="contact")
    lists.set_subscription(ada, news, True, method="test", actor="test")
    bob = _add("bob@example.com", first_name="Bob", last_name="@SUM(A1)", region="EU")
    dee = _add("dee@example.com", first_name="Dee", last_name="Stopped", region="EU")
    contacts.stop_processing(dee, method="page", actor="contact")
    _add("uma@example.com", first_name="Uma", last_name="Elsewhere", region="US")
    db.session.commit()
    return {"ada": ada, "bob": bob, "dee": dee}


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", "'=1+1"),
        ("+49 30 555", "'+49 30 555"),
        ("-2", "'-2"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("Ada", "Ada"),
        ("a=b", "a=b"),
        (None, ""),
    ],
)
def test_cells_a_spreadsheet_would_run_are_escaped(value, cell):
    assert export.escape_cell(value) == cell


def _rows(text: str) -> list[dict]:
    assert text.startswith("\ufeff")
    return list(csv.DictReader(io.StringIO(text[1:])))


def test_staff_export_the_filtered_list_and_download_it(agent_client, people):
    page = agent_client.get("/staff/contacts?region=EU")
    assert "Export these contacts as CSV" in page.text
    started = agent_client.post(
        "/staff/contacts/export", data={"csrf_token": csrf_token(page.text), "query": "region=EU"}
    )
    assert started.status_code == 303
    job_url = started.headers["Location"]
    queued = agent_client.get(job_url)
    assert "The export is queued." in queued.text
    assert "Download the CSV file" not in queued.text

    assert jobs.work(once=True) == 1
    done = unescape(agent_client.get(job_url).text)
    assert "2 contacts exported." in done
    assert "1 contact was left out because the processing of their data is stopped." in done
    download = re.search(r'href="(/staff/contacts/exports/\d+\.csv)"', done).group(1)

    response = agent_client.get(download)
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["Cache-Control"] == "no-store"
    rows = _rows(response.get_data(as_text=True))
    assert [row["email"] for row in rows] == ["ada@example.com", "bob@example.com"]
    ada, bob = rows
    assert ada["first_name"] == "'=1+1"  # a formula comes out escaped
    assert ada["phone"] == "'+44 20 7946 0000"
    assert bob["last_name"] == "'@SUM(A1)"
    assert ada["card_number"] == "•" * 12 + "1234"  # masked
    assert "4111" not in response.get_data(as_text=True)
    assert ada["consent:store-card"] == "granted"
    assert ada["consent:tracking"] == "revoked"
    assert bob["consent:tracking"] == "never asked"
    assert ada["lists"] == "newsletter" and bob["lists"] == ""
    assert ada["opt_in_status"] == "none"


def test_the_job_page_fragment_offers_the_download_when_done(agent_client, people):
    job = export.start(contact_filters.Filters(region="US"), created_by="test")
    db.session.commit()
    jobs.work(once=True)
    fragment = agent_client.get(f"/staff/jobs/{job.id}", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<section id="job-progress"')
    assert f"/staff/contacts/exports/{job.id}.csv" in fragment.text
    assert "No contact was left out." in fragment.text
    rows = _rows(agent_client.get(f"/staff/contacts/exports/{job.id}.csv").get_data(as_text=True))
    assert [row["last_name"] for row in rows] == ["Elsewhere"]


def test_an_unfinished_or_other_job_has_no_file(agent_client, people):
    job = export.start(contact_filters.Filters(), created_by="test")
    other = jobs.start("reencrypt-fields", created_by="test")
    db.session.commit()
    assert agent_client.get(f"/staff/contacts/exports/{job.id}.csv").status_code == 404
    assert agent_client.get(f"/staff/contacts/exports/{other.id}.csv").status_code == 404
    assert agent_client.get("/staff/contacts/exports/999999.csv").status_code == 404
    assert agent_client.get(f"/staff/contacts/exports/{10**20}.csv").status_code == 404


def test_an_export_with_a_filter_that_makes_no_sense_is_not_started(agent_client, people):
    page = agent_client.get("/staff/contacts")
    response = agent_client.post(
        "/staff/contacts/export", data={"csrf_token": csrf_token(page.text), "query": "list=gone"}
    )
    assert response.status_code == 200
    assert "There is no mailing list named “gone”" in unescape(response.text)
    assert db.session.scalar(sa.select(sa.func.count()).select_from(jobs.Job)) == 0


def test_a_record_stopped_during_the_export_is_left_out(app, people):
    job = export.start(contact_filters.Filters(region="EU"), created_by="test")
    db.session.commit()
    contacts.stop_processing(people["ada"], method="page", actor="contact")
    db.session.commit()
    jobs.work(once=True)
    db.session.refresh(job)
    assert export.left_out(job) == 2
    assert [row["email"] for row in _rows("\ufeff" + export.csv_text(job))] == ["bob@example.com"]


def test_an_interrupted_export_resumes_without_a_missing_or_doubled_line(app, people):
    for number in range(5):
        _add(f"extra{number}@example.com", region="EU")
    db.session.commit()
    job = export.start(contact_filters.Filters(region="EU"), created_by="test")
    db.session.commit()
    stop = threading.Event()

    def stop_after_three(progress):
        if progress.done == 3:
            stop.set()

    jobs.run(jobs.claim(job.id), on_progress=stop_after_three, stop=stop)
    db.session.refresh(job)
    assert job.status == "queued" and job.done == 3
    jobs.work(once=True)
    db.session.refresh(job)
    assert job.status == "done"
    emails = [row["email"] for row in _rows("\ufeff" + export.csv_text(job))]
    assert len(emails) == len(set(emails)) == 7
    assert export.left_out(job) == 1


def test_erasure_can_remove_a_contact_from_stored_exports(app, people):
    job = export.start(contact_filters.Filters(region="EU"), created_by="test")
    db.session.commit()
    jobs.work(once=True)
    assert export.forget_contact(people["ada"]) == 1
    db.session.refresh(job)
    assert "ada@example.com" not in export.csv_text(job)
