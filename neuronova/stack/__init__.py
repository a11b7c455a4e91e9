"""The local stack: install, start, check and stop the processes NeuroNova runs on one machine.

Its components, one module each (what it runs, how it is checked), declared in start order in
`components.py`:

- `orthanc`: the PACS (Debian's Orthanc with its DICOMweb plugin);
- `prefect`: the Prefect server, its SQLite database under the stack folder;
- `webapp` and `alerts`: the Flask app in two gunicorns (the gate and API; the alert streams);
- `nginx`: the gateway in front of them, Orthanc, OHIF and the Prefect UI;
- `fhir` and `emr`: the FHIR server (servers/fhir) and the OpenEMR emulator (servers/emr);
- `workers`: one Prefect worker per work pool (`worker-cpu`, `worker-gpu`).

The shared pieces: `component` (what a component is), `supervisor` (`LocalStack`: the start
and stop logic, pidfiles, health checks, status), `processes` (PIDs, sessions, reaping),
`ports` (free ports, settings for a stack of its own) and `packages` (Debian packages).
Adding a component means writing its module and placing one `Component` in `COMPONENTS`, not
editing the start/stop logic.
"""
