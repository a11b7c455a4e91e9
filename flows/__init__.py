"""Prefect flows, one per file: they sequence tasks, branch and decide; tasks do the work."""
