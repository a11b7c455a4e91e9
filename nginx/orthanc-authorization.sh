#!/bin/sh
# Run by the nginx image's entrypoint (/docker-entrypoint.d/) before nginx starts: writes the
# Authorization header that nginx's internal location sends Orthanc, from ORTHANC_PASSWORD
# (docker-compose.yml passes it from .env), readable by nginx's master only.
set -eu
: "${ORTHANC_PASSWORD:?set ORTHANC_PASSWORD in .env: Orthanc's service account password}"
user=${ORTHANC_USERNAME:-neuronova}
mkdir -p /etc/nginx/secrets
umask 077
token=$(printf '%s:%s' "$user" "$ORTHANC_PASSWORD" | base64 | tr -d '\n')
printf 'map $host $neuronova_orthanc_authorization {\n    default "Basic %s";\n}\n' "$token" \
  >/etc/nginx/secrets/orthanc-authorization.conf
