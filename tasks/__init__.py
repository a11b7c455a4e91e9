"""Prefect tasks and the plain code under them, one module per external system or concern."""
