"""The Prefect tasks and the plain code under them, a package per domain.

dicom/      one instance: the UID rule, parse and validate, header, the HTJ2K codec,
            transcode with bit-exact verification, volumes, the DICOM SEG
archive/    Orthanc: its client, our archive index, the HTJ2K check, replace, quarantine
ingest/     files, folders and zips → verified HTJ2K in Orthanc, a batch at a time
patients/   FHIR and OpenEMR clients, the patients cache, EMR → FHIR, the look-up chain
inference/  the model's grid, segmentation, results, the FHIR report, alerts
retry.py    the one retry policy of every network task
runners.py  the task runner a flow fans out with
"""
