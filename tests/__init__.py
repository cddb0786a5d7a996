"""Baton test suite: unit, integration and fault layers (see pyproject markers)."""
