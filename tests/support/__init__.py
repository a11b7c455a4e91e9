"""Helpers shared by test modules (fixtures stay in conftest files, which nothing imports)."""
