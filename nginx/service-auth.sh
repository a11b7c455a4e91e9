#!/bin/sh
# Run by the nginx image's entrypoint (/docker-entrypoint.d/) before nginx starts: writes the
# Authorization headers nginx adds on its way to the internal services (Orthanc's service
# account, the Prefect server's auth string) from the secrets docker-compose.yml hands over, and the public host name, the only one nginx answers. Readable by nginx's master
# only; the browser never sees them.
set -eu
# Compose hands the secrets over as files (ORTHANC_PASSWORD_FILE, PREFECT_AUTH_STRING_FILE).
from_file() {
  eval "file=\${${1}_FILE:-}"
  if [ -n "$file" ]; then
    [ -r "$file" ] || { echo "${1}_FILE names $file, which cannot be read" >&2; exit 1; }
    eval "$1=\$(cat \"\$file\")"
  fi
}
from_file ORTHANC_PASSWORD
from_file PREFECT_AUTH_STRING
: "${ORTHANC_PASSWORD:?give ORTHANC_PASSWORD_FILE (the orthanc_password secret): Orthanc's service account password}"
: "${PREFECT_AUTH_STRING:?give PREFECT_AUTH_STRING_FILE (the prefect_auth_string secret): the Prefect server's auth string}"
: "${NEURONOVA_PUBLIC_URL:?set NEURONOVA_PUBLIC_URL in .env: https://the-gateway-host}"
host=$(printf '%s' "$NEURONOVA_PUBLIC_URL" | sed -n 's#^https://\([A-Za-z0-9.-]*\)\(:443\)\{0,1\}/*$#\1#p')
if [ -z "$host" ]; then
  echo "NEURONOVA_PUBLIC_URL must be https://<host name> (port 443, no path): $NEURONOVA_PUBLIC_URL" >&2
  exit 1
fi
basic() { printf '%s' "$1" | base64 | tr -d '\n'; }
out=${NEURONOVA_NGINX_SECRETS:-/etc/nginx/secrets}  # another folder only in the tests
umask 077
mkdir -p "$out"
{
  printf 'map $host $neuronova_orthanc_authorization {\n    default "Basic %s";\n}\n' \
    "$(basic "${ORTHANC_USERNAME:-neuronova}:$ORTHANC_PASSWORD")"
  printf 'map $host $neuronova_prefect_authorization {\n    default "Basic %s";\n}\n' \
    "$(basic "$PREFECT_AUTH_STRING")"
} >"$out/service-authorization.conf"
printf 'server_name %s;\n' "$host" >"$out/server-name.conf"
