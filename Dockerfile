# leadbridge intake or worker; one image, the command picks the part (see docker-compose.yml).
#   docker build -t leadbridge .
#   docker run --env-file .env -p 8080:8080 -v leadbridge-ledger:/var/lib/leadbridge leadbridge
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LEADBRIDGE_CONFIG=/app/config.container.yaml

WORKDIR /app
# The whole tree (less .dockerignore): the package, the example config and mappings/.
COPY . .
RUN pip install .
# The example config with the two settings a container needs: intake must listen on every
# interface (server.host has no environment override), and the ledger lives on the volume.
# Generated rather than copied so it never drifts from config.example.yaml; mount your own
# config and point LEADBRIDGE_CONFIG at it to go live.
RUN python -c "import yaml; c = yaml.safe_load(open('config.example.yaml')); c['server']['host'] = '0.0.0.0'; c['ledger']['path'] = '/var/lib/leadbridge/leadbridge.db'; yaml.safe_dump(c, open('config.container.yaml', 'w'), sort_keys=False)"
# The same on the compose file's postgres service (its `postgres` profile picks this one),
# without helper workers: its three worker replicas are the scale-out, and three times four
# processes' pools would pass PostgreSQL's 100 connections.
RUN python -c "import yaml; c = yaml.safe_load(open('config.container.yaml')); c['ledger']['url'] = 'postgresql://leadbridge@postgres:5432/leadbridge'; c['worker']['processes'] = 1; yaml.safe_dump(c, open('config.postgres.yaml', 'w'), sort_keys=False)"

RUN useradd --system --uid 10001 --home-dir /var/lib/leadbridge --shell /usr/sbin/nologin leadbridge \
    && mkdir -p /var/lib/leadbridge \
    && chown leadbridge:leadbridge /var/lib/leadbridge
VOLUME /var/lib/leadbridge
USER leadbridge

EXPOSE 8080
# python, not curl: the slim image has no curl. /healthz answers 503 when the ledger is unreadable.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"]

# `leadbridge serve` runs gunicorn with the config's bind and worker count.
CMD ["leadbridge", "serve"]
