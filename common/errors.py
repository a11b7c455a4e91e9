"""The error hierarchy: one place, precise names, chained with `raise … from err`."""

from __future__ import annotations


class NeuroNovaError(Exception):
    """Base of every error NeuroNova raises on purpose."""


class IngestError(NeuroNovaError):
    """An input cannot be ingested; the file is quarantined with this message as the reason."""


class MalformedDicom(IngestError):
    """Zero bytes, not DICOM, truncated, or unparsable."""


class MissingIdentifier(IngestError):
    """A required identifier (PatientID, Study/Series/SOP Instance UID) is absent or empty."""


class UnreadablePixelData(IngestError):
    """The pixel module is missing, inconsistent, or its data cannot be decoded."""


class VerificationError(NeuroNovaError):
    """A transcoded or stored copy does not match its original bit for bit."""


class UpstreamError(NeuroNovaError):
    """A service we depend on (Orthanc, FHIR, EMR) failed."""


class TransientUpstreamError(UpstreamError):
    """Worth retrying: connection refused, timeout, 5xx, 429."""


class PermanentUpstreamError(UpstreamError):
    """Retrying would fail the same way: 4xx other than 408/429, a rejected payload."""


class StackError(NeuroNovaError):
    """The local stack could not be installed, started or stopped."""


class ConfigError(NeuroNovaError):
    """A configuration file of the project cannot be used as it is."""
