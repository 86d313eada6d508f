# SendFlowr application image: one image for dagster-webserver, dagster-daemon and the FastAPI
# decision API (docker-compose.yml picks the process with `command:`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    SENDFLOWR_HOME=/var/lib/sendflowr

WORKDIR /opt/sendflowr

# Dependencies first, read from pyproject.toml, so editing the code does not reinstall them.
# dagster-postgres backs the `storage: postgres:` block of deploy/dagster/dagster.yaml; its 0.29.x line
# is the one released with dagster 1.13.x (pyproject pins dagster==1.13.*), and pip resolves both
# together so the pair always matches.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt "dagster-postgres==0.29.*" \
    && rm /tmp/requirements.txt

# The project itself. Installed editable (`-e .`) on purpose: sendflowr.settings.PROJECT_ROOT is derived
# from the package location and sendflowr.migrations reads PROJECT_ROOT/sql/migrations, which is not
# package data; an editable install keeps PROJECT_ROOT=/opt/sendflowr in every process (uvicorn,
# dagster code servers, the `sendflowr` CLI).
COPY . .
RUN pip install --no-deps -e .

# Dagster instance config (Postgres storage from DAGSTER_PG_* env vars) and writable state dirs owned
# by an unprivileged user; the storage dirs are the mount points of named volumes in docker-compose.yml.
COPY deploy/dagster/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
RUN useradd --system --uid 10001 --create-home --home-dir /home/sendflowr --shell /usr/sbin/nologin sendflowr \
    && mkdir -p ${DAGSTER_HOME}/storage ${SENDFLOWR_HOME} \
    && chown -R sendflowr:sendflowr ${DAGSTER_HOME} ${SENDFLOWR_HOME}
USER sendflowr

EXPOSE 3000 8000

# Default process: the decision API. docker-compose.yml overrides it per service:
#   dagster-webserver -h 0.0.0.0 -p 3000 -w workspace.yaml   (loads sendflowr_assets.definitions)
#   dagster-daemon run -w workspace.yaml
CMD ["uvicorn", "sendflowr_api.app:app", "--host", "0.0.0.0", "--port", "8000"]
