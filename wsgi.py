"""WSGI entry point: ``gunicorn wsgi:app`` (config from $LEADBRIDGE_CONFIG)."""
from bridge.app import create_app

app = create_app()
