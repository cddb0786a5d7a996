"""Unit tests: pure code, no broker."""
