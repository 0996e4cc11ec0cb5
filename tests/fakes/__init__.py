"""Test doubles for hardware libraries (importable as `fakes` in tests, `tests.fakes` from the repo root)."""
