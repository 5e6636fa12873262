"""ASGI entry point of the API (``manage.py serve_api`` runs it under uvicorn): the edge serves the
hot routes, Django everything else (``api.edge.app``)."""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django.setup()

from api.edge.app import Application  # noqa: E402 (needs the settings above)

application = Application()
