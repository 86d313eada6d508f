# SendFlowr application image: one image for the compose `migrate` one-shot, the Dagster code server, webserver
# and daemon, the FastAPI decision API and the ESP webhook receiver (docker-compose.yml picks the process with
# `command:`).

# Stage 1: the project as a wheel. sql/ ships inside it as package data (sendflowr._sql, see setup.py), so the
# runtime image needs no source tree and no editable install.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    SENDFLOWR_HOME=/var/lib/sendflowr

# Dependencies first, read from pyproject.toml, so editing the code does not reinstall them.
# dagster-postgres backs the `storage: postgres:` block of deploy/dagster/dagster.yaml; its 0.29.x line
# is the one released with dagster 1.13.x (pyproject pins dagster==1.13.*), and pip resolves both
# together so the pair always matches.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "dagster-postgres==0.29.*" \
    && rm /tmp/requirements.txt /tmp/pyproject.toml

# The project itself, installed like any package (site-packages, SQL included).
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels

# Dagster instance (Postgres storage from DAGSTER_PG_* env vars, pools, run monitoring) and the workspace that
# points the webserver and daemon at the code server; writable state dirs owned by an unprivileged user (the
# storage dirs are the mount points of named volumes in docker-compose.yml).
COPY deploy/dagster/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
COPY deploy/dagster/workspace.yaml ${DAGSTER_HOME}/workspace.yaml
RUN useradd --system --uid 10001 --create-home --home-dir /home/sendflowr --shell /usr/sbin/nologin sendflowr \
    && mkdir -p ${DAGSTER_HOME}/storage ${SENDFLOWR_HOME} \
    && chown -R sendflowr:sendflowr ${DAGSTER_HOME} ${SENDFLOWR_HOME}
USER sendflowr
WORKDIR /home/sendflowr

EXPOSE 3000 4000 8000 8001

# Default process: the decision API. docker-compose.yml overrides it per service:
#   sendflowr migrate --with-topic                                         (one-shot)
#   dagster code-server start -h 0.0.0.0 -p 4000 -m sendflowr_assets.definitions --location-name sendflowr
#   dagster-webserver -h 0.0.0.0 -p 3000 -w /opt/dagster/home/workspace.yaml
#   dagster-daemon run -w /opt/dagster/home/workspace.yaml
#   uvicorn sendflowr_webhooks.app:app --host 0.0.0.0 --port 8001
CMD ["uvicorn", "sendflowr_api.app:app", "--host", "0.0.0.0", "--port", "8000"]
