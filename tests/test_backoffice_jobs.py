"""The jobs pages: start a job, watch its progress with htmx or with a plain refresh."""

from test_backoffice_auth import csrf_token

from portal import jobs
from portal.db import db


def test_an_admin_starts_a_job_and_watches_it(admin_client):
    page = admin_client.get("/staff/jobs")
    assert "Re-encrypt sensitive values with the active key" in page.text
    started = admin_client.post("/staff/jobs/reencrypt-fields",
                                data={"csrf_token": csrf_token(page.text)})
    assert started.status_code == 303
    job_url = started.headers["Location"]
    queued = admin_client.get(job_url)
    assert "Status: queued" in queued.text
    assert "Refresh to see the latest progress" in queued.text  # the way without JavaScript
    assert 'hx-trigger="every 1s"' in queued.text

    jobs.work(once=True)
    fragment = admin_client.get(job_url, headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert "HX-Request" in fragment.headers["Vary"]
    assert "<html" not in fragment.text
    assert fragment.text.lstrip().startswith('<section id="job-progress"')
    assert "Status: done" in fragment.text
    assert "hx-trigger" not in fragment.text  # a finished job stops the polling


def test_a_boosted_or_history_restore_request_gets_the_whole_page(admin_client):
    job = jobs.start("reencrypt-fields", created_by="test")
    db.session.commit()
    for headers in ({"HX-Request": "true", "HX-Boosted": "true"},
                    {"HX-Request": "true", "HX-History-Restore-Request": "true"}):
        response = admin_client.get(f"/staff/jobs/{job.id}", headers=headers)
        assert "<html" in response.text


def test_an_unknown_job_kind_or_id_is_a_404(admin_client):
    page = admin_client.get("/staff/jobs")
    assert admin_client.post("/staff/jobs/nope",
                             data={"csrf_token": csrf_token(page.text)}).status_code == 404
    assert admin_client.get("/staff/jobs/999999").status_code == 404
