#!/bin/sh
# Run by the nginx image's entrypoint (/docker-entrypoint.d/) before nginx starts: writes the
# Authorization headers nginx adds on its way to the internal services (Orthanc's service
# account, the Prefect server's auth string) from .env's secrets, which docker-compose.yml
# passes in. Readable by nginx's master only; the browser never sees them.
set -eu
: "${ORTHANC_PASSWORD:?set ORTHANC_PASSWORD in .env: Orthanc's service account password}"
: "${PREFECT_AUTH_STRING:?set PREFECT_AUTH_STRING in .env: the Prefect server's auth string}"
basic() { printf '%s' "$1" | base64 | tr -d '\n'; }
mkdir -p /etc/nginx/secrets
umask 077
{
  printf 'map $host $neuronova_orthanc_authorization {\n    default "Basic %s";\n}\n' \
    "$(basic "${ORTHANC_USERNAME:-neuronova}:$ORTHANC_PASSWORD")"
  printf 'map $host $neuronova_prefect_authorization {\n    default "Basic %s";\n}\n' \
    "$(basic "$PREFECT_AUTH_STRING")"
} >/etc/nginx/secrets/service-authorization.conf
