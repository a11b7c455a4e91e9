"""Every component of the local stack, in the order `stack up` starts them.

What each one runs, how it is checked and what it needs lives in its own module; this page
says which of them make up the stack and in what order: the stack's own MariaDB and Redis first
(a database a session may use, the alert channel), then Orthanc (ingest and the gate read it),
the Prefect server before the workers, the webapp and its alerts pool before nginx (the gateway
in front of them), the FHIR server and the EMR before the workers that sync patients.
`stack down` stops them in the reverse order.
"""

from __future__ import annotations

from neuronova.stack import (
    alerts,
    arrivals,
    emr,
    fhir,
    mariadb,
    nginx,
    orthanc,
    prefect,
    redis_server,
    webapp,
)
from neuronova.stack.component import Component
from neuronova.stack.workers import WORKERS

MARIADB = Component(
    name="mariadb",
    key="mysql",
    url=mariadb.status_url,
    command=mariadb.command,
    env=mariadb.env,
    health=mariadb.health,
    ports=mariadb.ports,
    prepare=mariadb.prepare,
    credentials=mariadb.credentials,
    packages=("mariadb-server",),
    # The first start initialises the data folder (mariadb-install-db) before it.
    start_timeout_s=60.0,
    port_hint="choose another port with NEURONOVA_STACK_MYSQL_PORT",
)

REDIS = Component(
    name="redis",
    key="redis",
    url=redis_server.status_url,
    command=redis_server.command,
    health=redis_server.health,
    ports=redis_server.ports,
    prepare=redis_server.prepare,
    credentials=redis_server.credentials,
    packages=("redis-server",),
    port_hint="choose another port with NEURONOVA_STACK_REDIS_PORT",
)

ORTHANC = Component(
    name="orthanc",
    key="orthanc",
    url=orthanc.status_url,
    command=orthanc.command,
    health=orthanc.health,
    credentials=orthanc.credentials,
    ports=orthanc.ports,
    prepare=orthanc.prepare,
    packages=("orthanc", "orthanc-dicomweb"),
    start_timeout_s=30.0,
    port_hint=(
        "a system Orthanc from the Debian package uses 8042/4242 when its service runs; "
        "choose other ports with NEURONOVA_ORTHANC_URL and NEURONOVA_ORTHANC_DICOM_PORT"
    ),
)

PREFECT = Component(
    name="prefect",
    key="prefect",
    url=prefect.prefect_url,
    command=prefect.command,
    health=prefect.health,
    credentials=prefect.credentials,
    ports=prefect.ports,
    prepare=prefect.prepare,
    env=prefect.prefect_env,
    # SQLite migrations and the UI build take 10–20 s on two cores.
    start_timeout_s=90.0,
    port_hint="choose another port with NEURONOVA_PREFECT_API_URL",
)

WEBAPP = Component(
    name="webapp",
    key="webapp",
    url=webapp.SERVICE.url,
    command=webapp.command,
    health=webapp.SERVICE.health,
    ports=webapp.SERVICE.ports,
    env=webapp.webapp_env,
    start_timeout_s=60.0,
    port_hint="choose another port with NEURONOVA_WEBAPP_URL",
)

ALERTS = Component(
    name="alerts",
    key="alerts",
    url=alerts.SERVICE.url,
    command=alerts.command,
    health=alerts.SERVICE.health,
    ports=alerts.SERVICE.ports,
    env=webapp.webapp_env,
    start_timeout_s=60.0,
    port_hint="choose another port with NEURONOVA_ALERTS_URL",
)

NGINX = Component(
    name="nginx",
    key="gateway",
    url=nginx.SERVICE.url,
    command=nginx.command,
    health=nginx.health,
    ports=nginx.SERVICE.ports,
    prepare=nginx.prepare,
    packages=("nginx", "libnginx-mod-http-brotli-static"),
    # The first start downloads OHIF (about 50 MB).
    start_timeout_s=60.0,
    port_hint="choose another port with NEURONOVA_GATEWAY_URL",
)

FHIR = Component(
    name="fhir",
    key="fhir",
    url=fhir.SERVICE.url,
    command=fhir.command,
    health=fhir.SERVICE.health,
    ports=fhir.SERVICE.ports,
    prepare=fhir.prepare,
    # Indexing the FHIR definitions takes a few seconds on two cores.
    start_timeout_s=60.0,
    port_hint="choose another port with NEURONOVA_FHIR_URL",
)

EMR = Component(
    name="emr",
    key="emr",
    url=emr.SERVICE.url,
    command=emr.command,
    health=emr.SERVICE.health,
    ports=emr.SERVICE.ports,
    prepare=emr.prepare,
    status_value=emr.status,
    port_hint="choose another port with NEURONOVA_EMR_URL",
)

ARRIVALS = Component(
    name="arrivals",
    key="arrivals",
    url=lambda s: f"{s.orthanc_url.rstrip('/')}/changes",
    command=arrivals.command,
    health=arrivals.health,
    ports=lambda s: [],
    env=arrivals.env,
    needs_deployments=True,
    start_timeout_s=60.0,
)

# The start order. The workers come next to last: they poll the Prefect server, run flows that
# talk to Orthanc, FHIR and the EMR, and report to the webapp's alert channel. Last, the
# arrival watcher, which gives them studies that arrive by C-STORE.
COMPONENTS: tuple[Component, ...] = (
    MARIADB,
    REDIS,
    ORTHANC,
    PREFECT,
    WEBAPP,
    ALERTS,
    NGINX,
    FHIR,
    EMR,
    *WORKERS,
    ARRIVALS,
)
