# One image for the webapp and the Prefect workers (ARCHITECTURE.md, Components).
FROM python:3.12-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends dcmtk dicom3tools \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY common common
COPY tasks tasks
COPY flows flows
COPY webapp webapp
COPY neuronova neuronova
COPY deployments deployments
RUN uv sync --frozen --no-dev && useradd --system --uid 10001 neuronova
ENV PATH=/app/.venv/bin:$PATH PREFECT_SERVER_ANALYTICS_ENABLED=false
USER neuronova
CMD ["prefect", "worker", "start", "--pool", "cpu"]
