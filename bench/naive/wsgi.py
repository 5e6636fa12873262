"""WSGI entry point of the naive baselines (gunicorn, as a plain Django deployment runs): the bench's
``naive`` and ``naive_celery`` scenarios. The product's API is ASGI (``config.asgi``)."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
application = get_wsgi_application()
