"""The EMR: the OpenEMR emulator (servers/emr) with its demo account, for the local stack and the
tests; production runs OpenEMR."""

from __future__ import annotations

import json
import os
import sys

from neuronova.stack.component import Context, LoopbackHttp

SERVICE = LoopbackHttp("emr", health_path="/healthz")


def command(ctx: Context) -> list[str]:
    # Imported here: pydicom and numpy come with it, and `neuronova stack status` need not wait.
    from neuronova.sample import SAMPLE_PATIENT_ID

    return [
        sys.executable,
        "-m",
        "servers.emr.emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(ctx.settings.emr_port),
        "--credentials",
        str(ctx.home / "credentials.json"),
        "--patients",
        str(ctx.settings.emr_demo_patients),
        # The patient of the sample studies, so that the demo's AI report has one to attach to.
        "--sample-patient-id",
        SAMPLE_PATIENT_ID,
    ]


def prepare(ctx: Context) -> None:
    credentials = ctx.settings.emr_credentials()
    path = ctx.home / "credentials.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(credentials, handle)


def status(ctx: Context) -> dict[str, str]:
    return {"url": SERVICE.url(ctx.settings), **ctx.settings.emr_credentials()}
