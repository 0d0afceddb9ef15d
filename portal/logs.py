"""What the portal logs holds no personal data (SECURITY.md 14): addresses and link tokens
are masked in every record of the app's and the job worker's loggers, tracebacks included, and
in the development server's request log."""

import logging
import re

#: Link tokens as links.make_token writes them: "<key id>.<payload>.<time>.<signature>", the
#: payload starting with a dot when compressed.
_TOKEN = re.compile(r"(?<![\w.-])[A-Za-z0-9-]{1,64}\.\.?[\w-]{8,}\.[\w-]{4,}\.[\w-]{20,}", re.ASCII)
_EMAIL = re.compile(r"[^\s@'\"<>()\[\],;:]+@[^\s@'\"<>()\[\],;:]+")
#: A link's path, whatever its token looks like: the one-click token of a List-Unsubscribe
#: header ("<key id>.<payload>.<signature>", which never expires) has no time part for _TOKEN.
_LINK_PATH = re.compile(r"(/(?:[pcudo]|t/[oc])/)[\w.-]+", re.ASCII)


class PersonalDataMask(logging.Filter):
    """Mask email addresses and link tokens in a log record's message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a call whose arguments do not fit its message
            message = str(record.msg)
        record.msg, record.args = _masked(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        # An exception's text may quote an address ("the recipient 'j@example.de' cannot be
        # sent..."). Formatters print the masked exc_text; a handler that formatted exc_info
        # again would print it unmasked, so only the text is kept.
        record.exc_info = None
        if record.exc_text:
            record.exc_text = _masked(record.exc_text)
        if record.stack_info:
            record.stack_info = _masked(record.stack_info)
        return True


def _masked(text: str) -> str:
    # Imported here: portal.erasure imports most of the package, and with it this module.
    from portal.erasure import mask_email

    text = _TOKEN.sub("<link token>", text)
    text = _LINK_PATH.sub(r"\1<link token>", text)
    return _EMAIL.sub(lambda match: mask_email(match.group()), text)


#: One filter for every app: addFilter adds it to a logger once, however many apps are built.
MASK_PERSONAL_DATA = PersonalDataMask()


#: Werkzeug's development server (`flask serve`, `flask run`) logs each request line there:
#: "GET /p/<token> HTTP/1.1" 200, a contact's link in full.
DEV_SERVER_LOG = logging.getLogger("werkzeug")


def init_app(app) -> None:
    """Mask addresses and link tokens in what the app, the job worker and the development
    server log; a filter on a logger sees only what is logged on that logger itself."""
    from portal import jobs

    for logger in (app.logger, jobs.log, DEV_SERVER_LOG):
        logger.addFilter(MASK_PERSONAL_DATA)
