"""Erasure (P8, B5, GDPR Art. 17): requests and their deadlines, "Erase personal data", "Delete
record", the suppression that keeps an erased address from coming back, and the erasure log.

One import for callers: the names below come from the package's modules.
"""

from portal.erasure.deadlines import DEADLINE_MONTHS
from portal.erasure.deadlines import MAX_EXTENSION_MONTHS
from portal.erasure.deadlines import MAX_REASON
from portal.erasure.deadlines import ErasureError
from portal.erasure.deadlines import ErasureExtension
from portal.erasure.deadlines import Request
from portal.erasure.deadlines import add_months
from portal.erasure.deadlines import extend
from portal.erasure.deadlines import request_of
from portal.erasure.deadlines import requests
from portal.erasure.forget import AlreadyErased
from portal.erasure.forget import delete
from portal.erasure.forget import erase
from portal.erasure.log import ERASED
from portal.erasure.log import KEPT
from portal.erasure.log import ErasureLog
from portal.erasure.log import latest_log
from portal.erasure.log import log_entries
from portal.erasure.log import mask_email

__all__ = [
    "DEADLINE_MONTHS",
    "ERASED",
    "KEPT",
    "MAX_EXTENSION_MONTHS",
    "MAX_REASON",
    "AlreadyErased",
    "ErasureError",
    "ErasureExtension",
    "ErasureLog",
    "Request",
    "add_months",
    "delete",
    "erase",
    "extend",
    "latest_log",
    "log_entries",
    "mask_email",
    "request_of",
    "requests",
]
