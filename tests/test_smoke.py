from portal import contacts
from portal import ledger
from portal.db import db


def test_smoke(app, client):
    contacts.add_contact("a@example.com", method="cli", actor="t")
    db.session.commit()
    assert ledger.verify().ok
    assert client.get("/").status_code == 200
