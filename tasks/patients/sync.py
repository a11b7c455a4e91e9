"""Resolve a patient by MRN: the cache, then FHIR, then OpenEMR, writing back on the way.

    cache hit (and nothing owed to FHIR)  → the cached Patient
    FHIR hit                              → saved to the cache
    EMR hit                               → converted, created in FHIR conditionally
                                            (If-None-Exist on the MRN), saved to the cache
    nowhere                               → None

FHIR down does not stop a look-up: the EMR's answer is cached with the write-back marked as
owed, and the next look-up or the bulk sync pays it. Several FHIR Patients for one MRN stop the
look-up and flag the MRN for a merge. Everything for one MRN runs under its lock, so parallel
look-ups of a new patient create one FHIR Patient; a run interrupted at any step converges when
run again (the conditional create finds what an earlier run made).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NotRequired, TypedDict

from common.errors import TransientUpstreamError
from common.settings import Settings
from tasks.patients import cache as patient_cache
from tasks.patients.convert import emr_to_fhir_patient
from tasks.patients.emr import OpenEmrClient
from tasks.patients.fhir import FhirClient, MultiplePatientsForMrn

log = logging.getLogger(__name__)


class LookupSource(StrEnum):
    """Where a patient was found."""

    CACHE = "cache"
    FHIR = "fhir"
    EMR = "emr"
    NONE = "none"  # nowhere: the MRN is unknown


class SyncOutcome(StrEnum):
    """What the bulk sync did with one EMR patient (the counts of `sync_patients`)."""

    CREATED = "created"  # a new FHIR Patient
    LINKED = "linked"  # FHIR had it already: cached with its id
    UPDATED = "updated"  # the EMR changed it: a new FHIR version
    UNCHANGED = "unchanged"  # the cache holds this EMR version, nothing owed
    FLAGGED = "flagged"  # several FHIR Patients for the MRN: flagged for a merge
    PENDING = "pending"  # FHIR down: cached, the write-back owed
    INVALID = "invalid"  # the EMR record cannot be converted (no MRN, say)


@dataclass(frozen=True)
class PatientLookup:
    mrn: str
    resource: dict[str, Any] | None  # the FHIR Patient, or None when the MRN is nowhere
    source: LookupSource
    fhir_pending: bool = False

    def report(self) -> PatientSyncReport:
        """What `sync_patient` returns (and ingest reports per patient)."""
        return PatientSyncReport(
            mrn=self.mrn,
            source=self.source,
            fhir_pending=self.fhir_pending,
            fhir_id=(self.resource or {}).get("id"),
            found=self.resource is not None,
        )


class PatientSyncReport(TypedDict):
    """A patient's sync: where it was found, and whether FHIR is still owed its write."""

    mrn: str
    found: bool
    source: NotRequired[LookupSource]
    fhir_pending: NotRequired[bool]
    fhir_id: NotRequired[str | None]
    # Set when ingest could not get the sync done (its hand-off failed or is still running).
    failed: NotRequired[bool]
    status: NotRequired[str]
    message: NotRequired[str]


def cached_lookup(settings: Settings, mrn: str) -> PatientLookup | None:
    """The cache alone (the fast path): None unless cached with nothing owed to FHIR."""
    cached = patient_cache.cached_resource(settings.resolved_database_url, mrn)
    if cached is None:
        return None
    return PatientLookup(mrn, json.loads(cached), LookupSource.CACHE)


def look_up_patient(settings: Settings, mrn: str) -> PatientLookup:
    """`resolve_patient` with clients for the configured FHIR server and OpenEMR."""
    with FhirClient.from_settings(settings) as fhir, OpenEmrClient.from_settings(settings) as emr:
        return resolve_patient(settings, mrn, fhir=fhir, emr=emr)


def resolve_patient(
    settings: Settings, mrn: str, *, fhir: FhirClient, emr: OpenEmrClient
) -> PatientLookup:
    """The look-up order with write-backs (see the module's docstring)."""
    url = settings.resolved_database_url
    with patient_cache.mrn_lock(url, mrn, settings.data_dir / "locks"):
        row = patient_cache.cached_patient(url, mrn)
        if row is not None and not row.fhir_pending:
            return PatientLookup(mrn, json.loads(row.resource), LookupSource.CACHE)
        if row is not None:  # found in the EMR earlier while FHIR was down: pay the write-back
            return _write_back(
                settings, fhir, mrn, json.loads(row.resource), row.emr_uuid, LookupSource.EMR
            )

        try:
            matches = fhir.search_by_identifier("Patient", settings.mrn_system, mrn)
        except TransientUpstreamError as err:
            log.warning("FHIR unavailable for MRN look-up (%s); asking the EMR", err)
            matches = None
        if matches:
            if len(matches) > 1:
                patient_cache.flag_for_merge(url, mrn, f"{len(matches)} FHIR Patients")
                raise MultiplePatientsForMrn(mrn)
            saved = patient_cache.save_patient(
                url, mrn=mrn, resource=matches[0], source=LookupSource.FHIR, fhir_pending=False
            )
            return PatientLookup(mrn, json.loads(saved.resource), LookupSource.FHIR)

        record = emr.find_by_mrn(mrn)
        if record is None:
            return PatientLookup(mrn, None, LookupSource.NONE)
        resource = emr_to_fhir_patient(record, mrn_system=settings.mrn_system, source=emr.base_url)
        if matches is None:  # FHIR was down: keep the answer, owe the write-back
            _cache_emr_patient(
                url, mrn, resource, record.get("uuid"), record.get("date"), owed=True
            )
            return PatientLookup(mrn, resource, LookupSource.EMR, fhir_pending=True)
        return _write_back(
            settings, fhir, mrn, resource, record.get("uuid"), LookupSource.EMR, record.get("date")
        )


def _write_back(
    settings: Settings,
    fhir: FhirClient,
    mrn: str,
    resource: dict[str, Any],
    emr_uuid: str | None,
    source: LookupSource,
    emr_updated: str | None = None,
) -> PatientLookup:
    """Create in FHIR unless there (conditional on the MRN), then cache the server's version."""
    url = settings.resolved_database_url
    body = {k: v for k, v in resource.items() if k not in ("id", "meta")} | {
        "meta": {"source": resource.get("meta", {}).get("source", "")}
    }
    try:
        stored, _created = fhir.conditional_create(body, system=settings.mrn_system, value=mrn)
    except MultiplePatientsForMrn:
        patient_cache.flag_for_merge(url, mrn, "several FHIR Patients at write-back")
        raise
    except TransientUpstreamError as err:
        log.warning("FHIR write-back for MRN failed (%s); kept as owed", err)
        _cache_emr_patient(url, mrn, resource, emr_uuid, emr_updated, owed=True, source=source)
        return PatientLookup(mrn, resource, source, fhir_pending=True)
    _cache_emr_patient(url, mrn, stored, emr_uuid, emr_updated, owed=False, source=source)
    return PatientLookup(mrn, stored, source)


def sync_emr_record(settings: Settings, fhir: FhirClient, record: dict[str, Any]) -> SyncOutcome:
    """Bring one EMR patient into FHIR and the cache: created, linked (FHIR had it), updated,
    unchanged, flagged (several FHIR Patients: a merge) or pending (FHIR down).

    Unchanged means the cache already holds this EMR version (OpenEMR's `date`) with nothing
    owed to FHIR; an already-known FHIR Patient gets a new version (PUT) when the EMR changed.
    """
    url = settings.resolved_database_url
    mrn = (record.get("pubpid") or "").strip()
    resource = emr_to_fhir_patient(record, mrn_system=settings.mrn_system, source=settings.emr_url)
    uuid, updated = record.get("uuid"), record.get("date")
    with patient_cache.mrn_lock(url, mrn, settings.data_dir / "locks"):
        row = patient_cache.cached_patient(url, mrn)
        if row is not None and not row.fhir_pending and updated and row.emr_updated == updated:
            return SyncOutcome.UNCHANGED
        try:
            if row is not None and row.fhir_id:
                stored = fhir.update({**resource, "id": row.fhir_id})
                outcome = SyncOutcome.UPDATED
            else:
                stored, created = fhir.conditional_create(
                    resource, system=settings.mrn_system, value=mrn
                )
                outcome = SyncOutcome.CREATED if created else SyncOutcome.LINKED
        except MultiplePatientsForMrn:
            patient_cache.flag_for_merge(url, mrn, "several FHIR Patients at bulk sync")
            return SyncOutcome.FLAGGED
        except TransientUpstreamError:
            _cache_emr_patient(url, mrn, resource, uuid, updated, owed=True)
            return SyncOutcome.PENDING
        _cache_emr_patient(url, mrn, stored, uuid, updated, owed=False)
        return outcome


def _cache_emr_patient(
    url: str,
    mrn: str,
    resource: dict[str, Any],
    emr_uuid: str | None,
    emr_updated: str | None,
    *,
    owed: bool,
    source: str = LookupSource.EMR,
) -> None:
    """Cache a patient that came from the EMR; `owed`: FHIR has not got it yet."""
    patient_cache.save_patient(
        url,
        mrn=mrn,
        resource=resource,
        source=source,
        fhir_pending=owed,
        emr_uuid=emr_uuid,
        emr_updated=emr_updated,
    )
