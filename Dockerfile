# lesson relay: a slim, non-root image that serves on $PORT (Railway sets it).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PORT=8000 LOG_FORMAT=json
COPY --from=build /install /usr/local
RUN useradd --create-home --uid 10001 lesson
USER lesson
WORKDIR /home/lesson
EXPOSE 8000
# python -m app drains open lessons on SIGTERM (every redeploy) before exiting.
CMD ["python", "-m", "app"]
