# The taskdeploy service: `taskdeploy serve` on 0.0.0.0:8000, as uid 10001, data in /var/lib/taskdeploy.
#
#   docker build -t taskdeploy .
#   # where no registry can be reached, on a base made by scripts/ensure-python-image.sh:
#   docker build --build-arg PYTHON_IMAGE=taskdeploy/python:3.11-slim -t taskdeploy .
#
# Docker access: the service creates and drives job containers through the engine's API, so the
# operator must give this container that API without making it root: mount the socket and add
# its group (`-v /var/run/docker.sock:/var/run/docker.sock --group-add "$(stat -c %g
# /var/run/docker.sock)"`, or `group_add` in compose), or point TASKDEPLOY_DOCKER_URL at a Docker
# socket proxy. Either way the engine's API is root-equivalent on its host: guard this container
# as you would root. Mount a volume on /var/lib/taskdeploy to keep SQLite data and spool files.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
# Optional package source for builds without direct PyPI access: a mirror (PIP_INDEX_URL), or a
# wheelhouse (PIP_FIND_LINKS with PIP_NO_INDEX=1). Unset, pip uses PyPI. They are recorded in
# the builder stage's history (not the final image's): keep credentials out of them.
ARG PIP_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python3 -m venv /opt/venv
WORKDIR /srv/taskdeploy
# Dependencies first, read from pyproject.toml alone, so that this layer survives code changes.
COPY pyproject.toml ./
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        >/tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY README.md alembic.ini ./
COPY migrations/ migrations/
COPY app/ app/
# Editable on purpose: app.migrate finds the Alembic scripts at <source>/migrations, next to the
# package, so the package must be imported from this tree, not from a copy in site-packages.
# Compiled here because the non-root user cannot write __pycache__ at run time.
RUN /opt/venv/bin/pip install --no-deps -e . \
 && /opt/venv/bin/python -m compileall -q app migrations \
 && /opt/venv/bin/python -c 'import app.migrate as m; assert m.MIGRATIONS_DIR.is_dir(), m.MIGRATIONS_DIR'

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title=taskdeploy \
      org.opencontainers.image.description="Runs shell commands in containers, on demand"
RUN groupadd --system --gid 10001 taskdeploy \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/taskdeploy --no-create-home \
        --shell /usr/sbin/nologin taskdeploy \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/taskdeploy
# Same base image as the builder, so the venv's interpreter links stay valid.
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /srv/taskdeploy /srv/taskdeploy
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TASKDEPLOY_HOST=0.0.0.0 \
    TASKDEPLOY_DATA_DIR=/var/lib/taskdeploy
WORKDIR /var/lib/taskdeploy
USER 10001:10001
EXPOSE 8000
# No curl in the image; the probe bypasses any HTTP(S)_PROXY set for S3.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:' + os.environ.get('TASKDEPLOY_PORT', '8000') + '/healthz', timeout=4)"]
CMD ["taskdeploy", "serve"]
