# Vigil: the HTTP API, the Alertmanager webhook, the Slack bot and the monitors (`vigil serve`).
#   docker build -t vigil .
#   docker compose up            # with PostgreSQL: compose.yaml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first (pinned), so code changes do not reinstall them.
COPY pyproject.toml constraints.txt README.md ./
COPY lifecycle ./lifecycle
COPY tools ./tools
COPY agent ./agent
COPY playbooks ./playbooks
COPY evals ./evals
COPY examples ./examples
RUN pip install -c constraints.txt ".[postgres]"

RUN useradd --create-home --uid 10001 vigil && mkdir -p /data && chown vigil /data
USER vigil
WORKDIR /data
# Embedded defaults land in /data/.vigil unless the URLs point elsewhere (compose.yaml does).
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
ENTRYPOINT ["vigil"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
