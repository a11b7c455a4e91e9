"""Prefect deployments: what runs on a schedule or on demand, and where."""
