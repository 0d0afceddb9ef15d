"""The jobs pages: start a job, watch its progress with htmx or with a plain refresh."""

import re

from test_backoffice_auth import csrf_token

from portal import campaigns
from portal import jobs
from portal import lists
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


def _flaky_kind(monkeypatch, done: list) -> str:
    """Register a job of five items whose third fails the first time it is tried."""
    tried = set()

    def process(_params, item):
        if item == 3 and item not in tried:
            tried.add(item)
            raise RuntimeError("the third item met a fault, with private words in it")
        done.append(item)

    kind = jobs.JobKind(
        name="test-flaky",
        label="A job that fails once",
        count=lambda _params: 5,
        items_after=lambda _params, after, limit: [(n, n) for n in range(after + 1, 6)][:limit],
        process=process,
    )
    monkeypatch.setitem(jobs.KINDS, kind.name, kind)
    return kind.name


def test_a_failed_job_is_resumed_by_an_admin_after_its_last_finished_item(
    admin_client, agent_client, monkeypatch
):
    done = []
    job = jobs.start(_flaky_kind(monkeypatch, done), created_by="test")
    db.session.commit()
    jobs.work(once=True)
    db.session.refresh(job)
    assert job.status == "failed" and done == [1, 2]

    page = admin_client.get(f"/staff/jobs/{job.id}")
    assert "an unexpected error (RuntimeError)" in page.text
    assert "private words" not in page.text
    assert "hx-trigger" not in page.text  # a failed job is not polled
    assert ">Resume</button>" in page.text
    seen_by_agent = agent_client.get(f"/staff/jobs/{job.id}")
    assert ">Resume</button>" not in seen_by_agent.text
    assert agent_client.post(
        f"/staff/jobs/{job.id}/resume", data={"csrf_token": csrf_token(seen_by_agent.text)}
    ).status_code == 403
    assert admin_client.post(f"/staff/jobs/{job.id}/resume").status_code == 400  # no CSRF token

    resumed = admin_client.post(
        f"/staff/jobs/{job.id}/resume", data={"csrf_token": csrf_token(page.text)}
    )
    assert resumed.status_code == 303
    assert "goes on after the last item it finished" in admin_client.get(
        resumed.headers["Location"]
    ).text
    jobs.work(once=True)
    db.session.refresh(job)
    assert job.status == "done"
    assert done == [1, 2, 3, 4, 5]  # nothing finished was done again

    again = admin_client.post(
        f"/staff/jobs/{job.id}/resume", data={"csrf_token": csrf_token(page.text)}
    )
    assert "Only a job that failed can be resumed." in admin_client.get(
        again.headers["Location"]
    ).text


def test_a_failed_campaign_send_is_resumed_from_the_campaigns_page(admin_client):
    news = lists.create_list("news", "News")
    campaign = campaigns.create(
        subject="Hello", text_body="Hi", html_body="", list_id=news.id, author="test"
    )
    db.session.commit()
    job = campaigns.send(campaign, author="test")
    job.status, job.error = "failed", "an unexpected error (RuntimeError)"
    db.session.commit()
    page = admin_client.get(f"/staff/jobs/{job.id}")
    assert f'href="/staff/campaigns/{campaign.id}"' in page.text
    assert ">Resume</button>" not in page.text
    answer = admin_client.post(
        f"/staff/jobs/{job.id}/resume", data={"csrf_token": csrf_token(page.text)}
    )
    assert answer.headers["Location"] == f"/staff/campaigns/{campaign.id}"
    db.session.refresh(job)
    assert job.status == "failed"  # the campaign's own page checks its rule, then resumes


def test_the_polled_progress_keeps_focus_and_its_status_is_announced_in_place(admin_client):
    # The section htmx replaces every second is no live region (replaced whole, it is not
    # announced reliably) and holds no link that focus could be on; the status above it is
    # filled out of band, so it stays in place and a screen reader hears it change.
    job = jobs.start("reencrypt-fields", created_by="test")
    db.session.commit()
    page = admin_client.get(f"/staff/jobs/{job.id}").text
    progress = re.search(r'<section id="job-progress".*?</section>', page, re.S).group(0)
    assert 'hx-trigger="every 1s"' in progress
    assert "aria-live" not in progress and "<a " not in progress
    assert "Refresh to see the latest progress" in page.split(progress)[1]
    state = re.search(r'<div id="job-state" role="status">(.*?)</div>', page, re.S)
    assert "Status: queued" in state.group(1)
    assert page.index('id="job-state"') < page.index('id="job-progress"')

    jobs.work(once=True)
    fragment = admin_client.get(f"/staff/jobs/{job.id}", headers={"HX-Request": "true"}).text
    assert "aria-live" not in fragment and "Refresh to see" not in fragment
    state = re.search(r'<div id="job-state" role="status" hx-swap-oob="innerHTML">(.*?)</div>',
                      fragment, re.S)
    assert "Status: done" in state.group(1)
    assert re.search(r"(\d+) of \1 items done\.", state.group(1))
