"""gunicorn's entry point: `gunicorn webapp.wsgi:app` (settings from NEURONOVA_* variables).

Logs go to stderr as JSON lines with their request id and study (`common.logs`)."""

from common.logs import configure_logging
from common.settings import Settings
from webapp import create_app

settings = Settings()
configure_logging("webapp", settings.log_format, settings.log_level)
app = create_app(settings)
