# One image for the webapp and the Prefect workers (ARCHITECTURE.md, Components).
# Pinned by digest (docker-compose.yml says how to move to a newer one).
FROM python:3.12.12-slim-bookworm@sha256:593bd06efe90efa80dc4eee3948be7c0fde4134606dd40d8dd8dbcade98e669c
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
# The MONAI bundle the gpu worker reads (Settings.model_bundle_dir: models/brain_lesion_seg).
COPY models models
# The local stack's FHIR server and OpenEMR emulator: in the wheel, never started here
# (production runs HAPI FHIR and OpenEMR).
COPY servers servers
# Bytecode compiled now: the image's user cannot write /app, and every flow run is a new
# process that would otherwise compile Prefect and the flows again before it starts.
RUN uv sync --frozen --no-dev --compile-bytecode \
    && .venv/bin/python -m compileall -q common tasks flows webapp neuronova deployments models servers \
    && useradd --system --uid 10001 neuronova \
    && mkdir -p /data && chown neuronova:neuronova /data
# /data: NEURONOVA_DATA_DIR in compose. A named volume mounted there starts as a copy of this
# folder, owned by the image's user, so the workers can write their reports into it.
# HOME and PREFECT_HOME under /tmp: the image's user has no home, and every container its own /tmp.
ENV PATH=/app/.venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PREFECT_SERVER_ANALYTICS_ENABLED=false NEURONOVA_DATA_DIR=/data \
    HOME=/tmp PREFECT_HOME=/tmp/prefect
# VAR_FILE → VAR for every secret compose hands over as a file (scripts/container-entrypoint).
COPY --chmod=0755 scripts/container-entrypoint /usr/local/bin/neuronova-entrypoint
USER neuronova
ENTRYPOINT ["/usr/local/bin/neuronova-entrypoint"]
CMD ["prefect", "worker", "start", "--pool", "cpu"]
