# One image for the API, the workers and beat; docker-compose.yml picks the command.
FROM python:3.11-slim

# Production settings unless a command says otherwise: they refuse to start without SECRET_KEY and
# ALLOWED_HOSTS, rather than run with the development defaults.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 DJANGO_SETTINGS_MODULE=config.production
WORKDIR /app

COPY pyproject.toml constraints.txt README.md ./
RUN pip install -c constraints.txt .

COPY . .
# var/archive is a volume in docker-compose.yml: created here so the volume starts owned by app.
RUN useradd --system --uid 1000 app && mkdir -p var/archive && chown -R app var
USER app

EXPOSE 8000
CMD ["python", "manage.py", "serve_api", "--host", "0.0.0.0", "--port", "8000"]
