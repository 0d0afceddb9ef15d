"""The WSGI entry point: ``gunicorn wsgi:app`` or ``flask --app wsgi ...``."""

import sys

from portal import ConfigError
from portal import create_app

try:
    app = create_app()
except ConfigError as error:
    # One line naming the variable, not a traceback.
    sys.exit(f"configuration error: {error}")
