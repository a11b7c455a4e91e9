"""gunicorn's entry point: `gunicorn webapp.wsgi:app` (settings from NEURONOVA_* variables)."""

from webapp import create_app

app = create_app()
