"""The `neuronova` command: ingest, HTJ2K checks, the local stack, the database, the demo.

Heavy modules are imported inside the commands: flows after `use_prefect_server` has chosen
the Prefect API (Prefect reads its settings at import), and the database and DICOM stacks only
where used, so `neuronova stack status` answers in about a second rather than five.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from common.private_files import use_private_umask
from common.settings import Settings
from neuronova import stack_cli, users_cli
from neuronova.prefect_env import use_prefect_server, use_stack_prefect

if TYPE_CHECKING:  # the flows import Prefect, which must wait for `use_prefect_server`
    from flows.ingest_study import IngestReport
    from tasks.inference.results import InferenceReport

app = typer.Typer(help="NeuroNova: verified HTJ2K ingest, AI reading, secure viewing.")
app.add_typer(stack_cli.app, name="stack")
app.add_typer(users_cli.app, name="users")
secrets_app = typer.Typer(help="The production stack's secrets (docker-compose.yml).")
app.add_typer(secrets_app, name="secrets")
db_app = typer.Typer(help="The NeuroNova database (archive index, quarantine, users…).")
app.add_typer(db_app, name="db")


@app.callback()
def _private_files() -> None:
    """Every command makes what it writes (results, quarantine, reports) its owner's only."""
    use_private_umask()


console = Console(stderr=True)

# Exit codes scripts can rely on.
EXIT_OK, EXIT_FAILED, EXIT_PARTIAL, EXIT_NOT_FOUND = 0, 1, 3, 4


@secrets_app.command("generate")
def secrets_generate(
    folder: Annotated[
        Path, typer.Option("--dir", help="The folder docker-compose.yml reads them from.")
    ] = Path("secrets"),
) -> None:
    """Write every missing secret of docker-compose.yml (random, one file each); existing
    ones are kept. The EMR's two are the hospital's: replace them with its API client's secret
    and its user's password unless the bundled OpenEMR is used."""
    from neuronova.compose_secrets import SECRET_FILES, generate_secrets

    try:
        done = generate_secrets(folder)
    except ValueError as err:
        _fail(False, str(err), hint="see docs/operations.md, With compose")
    for name in done.written:
        console.print(f"wrote {folder / name}")
    if done.kept:
        console.print(f"kept {len(done.kept)} existing: {', '.join(done.kept)}")
    hospital = [s.name for s in SECRET_FILES if s.hospital_provides and s.name in done.written]
    if hospital:
        console.print(
            f"[yellow]{', '.join(hospital)}: generated for the bundled OpenEMR; with the "
            "hospital's EMR, write its API client's secret and its user's password there[/yellow]"
        )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database schema to the newest revision."""
    from common.db import migrate

    settings = Settings()
    migrate(settings.resolved_database_url)
    console.print("[green]database schema is up to date[/green]")


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="A DICOM file, a folder, or a zip archive.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    remove_originals: Annotated[
        bool, typer.Option(help="Delete input files once their verified copy is stored.")
    ] = False,
) -> None:
    """Ingest DICOM into Orthanc as verified HTJ2K lossless.

    Exit status: 0 all stored or duplicate, 3 some quarantined or in conflict, 1 the run failed.
    """
    from tasks.ingest.workers import start_workers  # standard library only: light

    settings = Settings()
    start_workers(settings.ingest_processes)  # their imports overlap with ours below
    use_prefect_server(settings)
    from flows.ingest_study import ingest_study

    with console.status(f"Ingesting {path} …"):
        try:
            report = ingest_study(str(path.resolve()), remove_originals=remove_originals)
        except Exception as err:
            _fail(as_json, f"ingest failed: {err}", hint="fix the cause and re-run: it is safe")
    _print_ingest(report, as_json)
    counts = report["counts"]
    raise typer.Exit(EXIT_PARTIAL if counts["quarantined"] or counts["conflict"] else EXIT_OK)


@app.command()
def patient(
    mrn: Annotated[str, typer.Argument(help="The patient's MRN (OpenEMR pubpid).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the FHIR Patient as JSON.")
    ] = False,
) -> None:
    """Look a patient up: cache, then FHIR, then OpenEMR (with write-backs).

    Exit status: 0 found, 4 not found anywhere, 1 the sources failed.
    """
    from common.db import ensure_schema
    from common.errors import UpstreamError
    from tasks.patients.mrn import InvalidMrn, checked_mrn
    from tasks.patients.sync import look_up_patient

    try:
        checked_mrn(mrn)
    except InvalidMrn as err:
        raise typer.BadParameter(str(err), param_hint="MRN") from None
    settings = Settings()
    ensure_schema(settings.resolved_database_url)
    try:
        lookup = look_up_patient(settings, mrn)
    except UpstreamError as err:
        console.print(f"[red]{err}[/red]")
        raise typer.Exit(EXIT_FAILED) from None
    if lookup.resource is None:
        console.print(f"[yellow]no patient with MRN {mrn} in the cache, FHIR or the EMR[/yellow]")
        raise typer.Exit(EXIT_NOT_FOUND)
    if as_json:
        print(json.dumps(lookup.resource, indent=2, ensure_ascii=False))
        return
    name = (lookup.resource.get("name") or [{}])[0]
    console.print(
        f"{mrn}: {' '.join(name.get('given', []))} {name.get('family', '')}, "
        f"{lookup.resource.get('birthDate', 'birth date unknown')}, {lookup.resource.get('gender')}"
        f" (from {lookup.source}; FHIR id {lookup.resource.get('id', 'pending')})"
    )


@app.command()
def infer(
    study_uid: Annotated[str, typer.Argument(help="The StudyInstanceUID to read.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run the brain-lesion model on a study: SEG into Orthanc, report into FHIR.

    Idempotent: a study already read by this model version is not read again.
    Exit status: 0 done, 3 done but the FHIR report is owed (see the note), 4 nothing to read,
    1 the run failed (safe to re-run).
    """
    settings = Settings()
    use_prefect_server(settings)
    from flows.run_inference import run_inference
    from tasks.inference.results import InferenceStatus

    with console.status(f"Reading study {study_uid} …"):
        try:
            result = run_inference(study_uid)
        except Exception as err:
            _fail(as_json, f"inference failed: {err}", hint="fix the cause and re-run: it is safe")
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print_inference(result)
    if result["status"] == InferenceStatus.NO_SUITABLE_SERIES:
        raise typer.Exit(EXIT_NOT_FOUND)
    raise typer.Exit(EXIT_OK if result["status"] == InferenceStatus.COMPLETED else EXIT_PARTIAL)


def _print_inference(result: InferenceReport) -> None:
    if "model" not in result:  # nothing was read: the message says why
        console.print(f"[yellow]{result['message']}[/yellow]")
        return
    model = result["model"]
    again = " (already done earlier)" if result["reused"] else ""
    console.print(
        f"{model['name']} {model['version']} on {result['device']}{again}: "
        f"{result['lesion_count']} lesion(s), {result['lesion_volume_ml']:.2f} mL in total"
    )
    console.print(f"SEG in Orthanc: {result['seg']['sop_instance_uid']}")
    report = result["fhir"]["report"]
    owed = f"[yellow]FHIR report owed: {result['note']}[/yellow]"
    console.print(f"FHIR: {report} for {result['fhir']['patient']}" if report else owed)
    alert = result.get("alert")
    if alert and alert["owed"]:
        console.print(f"[yellow]Clinicians' alert {alert.get('reason', 'owed')}[/yellow]")
    console.print("AI generated, not for clinical use.")


@app.command("check-htj2k")
def check_htj2k(
    study: Annotated[
        str | None, typer.Option(help="StudyInstanceUID; the whole archive when omitted.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Find instances in Orthanc that are not HTJ2K lossless; transcode, verify, replace."""
    settings = Settings()
    use_prefect_server(settings)
    from flows.check_htj2k import check_htj2k as check_flow

    with console.status("Checking the archive for non-HTJ2K instances …"):
        try:
            report = check_flow(study_instance_uid=study)
        except Exception as err:
            _fail(as_json, f"HTJ2K check failed: {err}", hint="re-run: it is safe")
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        console.print(report["counts"])
    raise typer.Exit(EXIT_PARTIAL if report["counts"].get("failed") else EXIT_OK)


@app.command()
def conflicts(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
    limit: Annotated[int, typer.Option(help="The newest this many.", min=1)] = 200,
) -> None:
    """Inputs held as conflicts (another patient's study, another study's series, other content
    under a known SOPInstanceUID), newest first, for an admin to reconcile.

    Each is kept byte for byte at its `kept` path with its reason; after the source is
    corrected (or the index, when the first one was wrong), ingest the kept file again.
    """
    from sqlmodel import select

    from common.db import QuarantineItem, ensure_schema, session_scope

    settings = Settings()
    ensure_schema(settings.resolved_database_url)
    query = (
        select(QuarantineItem)
        .where(QuarantineItem.kind == "conflict")
        .order_by(QuarantineItem.created_at.desc())  # type: ignore[attr-defined]
        .limit(limit)
    )
    with session_scope(settings.resolved_database_url) as session:
        rows = [
            {
                "id": row.id,
                "at": row.created_at.isoformat(),
                "sop_instance_uid": row.sop_instance_uid,
                "source": row.source_path,
                "kept": row.kept_path,
                "reason": row.reason,
            }
            for row in session.exec(query)
        ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("[green]no conflicts[/green]")
        return
    table = Table("id", "at", "SOP Instance UID", "reason", "kept")
    for row in rows:
        table.add_row(
            *(str(row[key] or "") for key in ("id", "at", "sop_instance_uid", "reason", "kept"))
        )
    Console().print(table)


@app.command("watch-arrivals")
def watch_arrivals(
    once: Annotated[bool, typer.Option("--once", help="One pass, then exit.")] = False,
    heartbeat: Annotated[
        Path | None, typer.Option(help="A file touched after every pass (for health checks).")
    ] = None,
) -> None:
    """Hand every study that becomes stable in Orthanc (C-STORE, STOW, any way in) to a
    `process_arrival` run on the cpu pool: HTJ2K, index, patient, AI. Runs until stopped."""
    from common.db import ensure_schema
    from common.logs import configure_logging
    from neuronova.arrivals_watcher import watch, watch_once
    from tasks.archive.orthanc import OrthancClient

    settings = Settings()
    configure_logging("arrivals", settings.log_format, settings.log_level)
    ensure_schema(settings.resolved_database_url)  # it may start before anything else did
    use_stack_prefect(settings)
    if once:
        with OrthancClient.from_settings(settings) as client:
            done = watch_once(settings, client)
        console.print(
            f"{done.found} new arrivals, {done.submitted} runs created, "
            f"{done.resubmitted} to run again"
        )
        return
    watch(settings, heartbeat)


@app.command()
def serve() -> None:
    """Serve the deployments: the nightly archive HTJ2K check, on-demand ingest and checks."""
    settings = Settings()
    if use_prefect_server(settings) is None:
        _fail(False, "no Prefect server answers", hint="start it: neuronova stack up")
    from prefect import serve as prefect_serve

    from deployments.schedules import build_deployments

    deployments = build_deployments(settings)
    console.print(f"serving {len(deployments)} deployments; Ctrl-C stops")
    prefect_serve(*deployments)


@app.command()
def deploy(
    migrate_first: Annotated[
        bool,
        typer.Option(
            "--migrate",
            help="Bring the database schema up to date first (compose's one-shot `deploy`).",
        ),
    ] = False,
) -> None:
    """Register the work pools (cpu, gpu) and every deployment on a running Prefect server."""
    settings = Settings()
    if migrate_first:
        from common.db import migrate

        migrate(settings.resolved_database_url)
        console.print("database schema is up to date")
    if use_prefect_server(settings) is None:
        console.print(
            f"[red]no Prefect server answers at {settings.prefect_api_url}[/red]\n"
            "start one (`neuronova stack up`) or set PREFECT_API_URL, then run this again"
        )
        raise typer.Exit(EXIT_FAILED)
    from deployments.work_pools import pool_limits, register_deployments

    registered = register_deployments(settings)
    for name in registered:
        console.print(f"deployed {name}")
    limits = ", ".join(f"{p} (limit {n or 'none'})" for p, n in pool_limits(settings).items())
    console.print(f"work pools: {limits}; start workers with `prefect worker start --pool cpu`")
    console.print(
        f"a worker's run silent for {settings.flow_crashed_after_s} s is marked Crashed "
        f"(heartbeats every {settings.flow_heartbeat_s} s: PREFECT_FLOWS_HEARTBEAT_FREQUENCY "
        "on the workers), and its arrival is run again"
    )


@app.command()
def sample(
    folder: Annotated[Path, typer.Argument(help="Where to write the sample study.")],
    slices: Annotated[int, typer.Option(min=1, max=512)] = 24,
    mr: Annotated[
        bool, typer.Option("--mr", help="The brain MR with lesions instead (true mask beside).")
    ] = False,
) -> None:
    """Write a bundled sample study into FOLDER: a synthetic head CT series, or a brain MR."""
    from neuronova.sample import write_sample_study

    if mr:
        from neuronova.sample_mr import write_sample_mr_study

        files, mask = write_sample_mr_study(folder)
        console.print(f"wrote {len(files)} MR instances to {folder}; true lesion mask: {mask}")
        return
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task("writing sample study", total=slices)
        paths = write_sample_study(
            folder, slices=slices, progress=lambda n: progress.advance(bar, n)
        )
    console.print(f"wrote {len(paths)} instances to {folder}")


@app.command()
def demo() -> None:
    """Start the local stack, send the sample study by C-STORE as a modality would, wait for the
    AI's reading, print a viewer link for a clinician."""
    settings = Settings()
    from common.db import migrate
    from neuronova.stack.supervisor import LocalStack

    migrate(settings.resolved_database_url)  # before the web workers start on it
    use_stack_prefect(settings)  # before the stack code imports Prefect
    with console.status(
        "Starting the local stack and registering its deployments (the first run installs "
        "packages) …"
    ):
        status = LocalStack(settings).up()
    folder = settings.data_dir / "sample-mr-study"
    sample(folder, mr=True)
    import pydicom

    from neuronova.demo import send_by_cstore, wait_for_reading

    ui = f"{status['gateway']}/prefect/"
    files = sorted(folder.glob("*.dcm"))
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    started = time.monotonic()
    with console.status(
        f"storescu sends the sample brain MR ({len(files)} instances) to Orthanc as a modality "
        "would; once stable, the arrival watcher hands it to the cpu worker (HTJ2K, index, "
        "patient) and the gpu worker reads it …"
    ):
        send_by_cstore(settings, files)
        arrivals, reading = wait_for_reading(settings, study_uid, settings.handoff_timeout_s + 600)
    for arrival in arrivals:
        run = f"{ui}runs/flow-run/{arrival.flow_run_id}" if arrival.flow_run_id else "no run"
        console.print(f"arrival {arrival.change_seq} ({arrival.state}): {arrival.detail}  {run}")
    if reading is None:
        console.print(
            "[red]the sample study was not read by the AI in time[/red]: see the runs above, "
            f"the watcher log {status['components']['arrivals']['log']} and the worker logs; "
            "`make demo` again is safe"
        )
        raise typer.Exit(EXIT_FAILED)
    console.print(
        f"sent → read by the AI in {time.monotonic() - started:.0f} s: {reading.model_name} "
        f"{reading.model_version} on {reading.device}: {reading.lesion_count} lesion(s), "
        f"{reading.lesion_volume_ml:.2f} mL; FHIR report {reading.fhir_report_id or 'owed'}. "
        "AI generated, not for clinical use."
    )
    from neuronova.demo import (
        DEMO_ADMIN,
        DEMO_CLINICIAN,
        DEMO_RADIOLOGIST,
        ensure_demo_admin,
        ensure_demo_clinician,
        ensure_demo_radiologist,
        prefect_ui_link,
        viewer_link,
    )

    password = ensure_demo_clinician(settings)
    ensure_demo_radiologist(settings)
    link = viewer_link(status["gateway"], DEMO_CLINICIAN, password, study_uid)
    ui_link = prefect_ui_link(status["gateway"], DEMO_ADMIN, ensure_demo_admin(settings))
    console.print(f"\nOrthanc (loopback only, behind the gateway): {status['orthanc']}")
    console.print(
        f"Prefect UI, for admins, behind the gateway: {ui}  (flow runs: 'process_arrival' and "
        "its linked 'sync_patient' on pool cpu, 'run_inference' on pool gpu; artifacts). "
        f"This link logs {DEMO_ADMIN} in (one use, within 5 minutes):"
    )
    print(ui_link)
    gateway = str(status["gateway"]).rstrip("/")
    console.print(
        f"Sign in at {gateway}/ as {DEMO_CLINICIAN} (password in "
        f"{settings.secrets_dir / (DEMO_CLINICIAN + '.password')}): the worklist shows the "
        "sample patient's study with its AI result; Open shows it in OHIF."
    )
    console.print(
        f"Sign in as {DEMO_RADIOLOGIST} (password in "
        f"{settings.secrets_dir / (DEMO_RADIOLOGIST + '.password')}) to review the AI's reading: "
        "the study is awaiting review on the worklist (Review: accept or reject each lesion)."
    )
    console.print(
        f"FHIR R4: {status['fhir']}   OpenEMR (emulator): {status['emr']['url']}  "
        "(try: .venv/bin/neuronova patient NN-000001)"
    )
    console.print("Stop the stack with: .venv/bin/neuronova stack down")
    console.print(
        "\nOpen the sample study in OHIF (the link opens once, within "
        f"{settings.viewer_link_ttl_s // 60} minutes, in one browser; "
        "run `make demo` for a new one):"
    )
    print(link)


def _print_ingest(report: IngestReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    out = Console()
    for study in report["studies"]:
        table = Table(title=f"Study {study['study_instance_uid']}", title_justify="left")
        for column in ("series", "mod.", "inst.", "MB in", "MB out", "ratio", "verified"):
            table.add_column(column, no_wrap=True)
        for row in study["series"]:
            table.add_row(
                "…" + row["series_instance_uid"][-12:],
                row["modality"],
                str(row["instances"]),
                f"{row['bytes_before'] / 1e6:.2f}",
                f"{row['bytes_after'] / 1e6:.2f}",
                str(row["ratio"]),
                row["verification"].split()[0],
            )
        out.print(table)
    console.print(f"files: {report['counts']}")
    for item in report["files"]:
        if item["status"] in ("quarantined", "conflict"):
            console.print(f"[yellow]{item['status']}[/yellow] {item['path']}: {item['reason']}")


def _fail(as_json: bool, message: str, *, hint: str) -> None:
    if as_json:
        print(json.dumps({"error": message, "hint": hint}))
    else:
        console.print(f"[red]{message}[/red]\n{hint}")
    raise typer.Exit(EXIT_FAILED)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
