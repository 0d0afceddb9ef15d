"""Contacts in the back office: the filtered list, saved filters, CSV export and the record."""

from portal.backoffice.contacts import listing  # noqa: F401
from portal.backoffice.contacts import record  # noqa: F401
