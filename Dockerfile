# The service image: one image for the api, the controller, the Celery worker and the
# watchdog; the command picks which. The build context is the repository root:
#
#   docker build -t pretrain-orchestrator/service:0.1.0 .
#
#   docker run -p 8000:8000 -e PRETRAIN_ENVIRONMENT=development \
#       pretrain-orchestrator/service:0.1.0                       # the API (SQLite, embedded)
#   docker run ... pretrain-orchestrator/service:0.1.0 pretrainctl controller
#   docker run ... pretrain-orchestrator/service:0.1.0 pretrainctl worker
#   docker run ... pretrain-orchestrator/service:0.1.0 pretrainctl watchdog run
#   docker run ... pretrain-orchestrator/service:0.1.0 pretrainctl db upgrade
#
# The package goes in without extras: no `dev`, and no `trainer` (torch and megatron-core
# live in trainer_image/Dockerfile only). Nothing is fetched at run time, and no secret is
# baked in: the database URL, Redis URL and admin token come from the environment
# (the Helm chart's Secret).

FROM python:3.11.13-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY pretrainctl ./pretrainctl
COPY trainer_image/trainer ./trainer_image/trainer
# `.` is this checkout, without extras; its dependencies are the ranges pyproject.toml sets.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir .


FROM python:3.11.13-slim-bookworm

# Numeric ids, so that Kubernetes' runAsNonRoot can verify them without /etc/passwd. The home
# is the state directory: the only place the process writes (SQLite and a generated admin
# token on the embedded default; nothing with Postgres).
RUN groupadd --gid 10001 pretrain \
    && useradd --no-log-init --uid 10001 --gid 10001 --create-home \
        --home-dir /var/lib/pretrain-orchestrator --shell /usr/sbin/nologin pretrain

COPY --from=build /opt/venv /opt/venv
# `Settings.migrations_dir` defaults to `migrations/` beside the `service` package.
COPY migrations /opt/venv/lib/python3.11/site-packages/migrations

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PRETRAIN_API_HOST=0.0.0.0 \
    PRETRAIN_API_PORT=8000 \
    PRETRAIN_STATE_DIR=/var/lib/pretrain-orchestrator

# The image keeps its promises: no torch, the migrations found where Settings looks, the
# entry points import.
RUN python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch is in the service image'" \
    && python -c "from service.db.migrate import head_revision; from service.settings import Settings; print('schema head', head_revision(Settings(environment='development')))" \
    && python -c "import service.main, service.controller.backends.kubernetes, service.watchdog.consumer" \
    && pretrainctl --help > /dev/null

USER 10001:10001
WORKDIR /var/lib/pretrain-orchestrator
EXPOSE 8000

# Docker's own check, for `docker run`: the API's liveness endpoint, with the standard library.
# Kubernetes ignores HEALTHCHECK (the chart sets probes); run the controller, worker or
# watchdog under plain Docker with `--no-healthcheck`, as they serve no HTTP.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PRETRAIN_API_PORT', '8000'), timeout=4)"]

CMD ["pretrainctl", "serve"]
