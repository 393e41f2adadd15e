# lesson relay: a slim, non-root image that serves on $PORT (Railway sets it).
# Layers run from the least to the most often changed: the user, the locked dependencies (requirements.lock,
# written by `bash .ci/lock`), then the source, so a change under app/ rebuilds only the last two layers.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_CACHE_DIR=1 \
    PORT=8000 \
    LOG_FORMAT=json

# The user's home is the working directory: the SQLite default (data/lessons.db) is created there, while the
# source below stays root's and read-only to the server.
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin lesson

WORKDIR /home/lesson
COPY requirements.lock ./
# --no-deps: the lock is complete, so pip installs exactly it; pip check proves it is consistent.
RUN pip install --no-deps --requirement requirements.lock && pip check

COPY app ./app
# Compiled once here: the server runs as a user that cannot write next to the source.
RUN python -m compileall -q app

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 CMD ["python", "-m", "app.healthcheck"]
# python -m app drains open lessons on SIGTERM (every redeploy) and exits within
# SHUTDOWN_GRACE_SECONDS + 5 s, inside railway.json's drainingSeconds.
CMD ["python", "-m", "app"]
