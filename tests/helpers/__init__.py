"""Test helpers shared across test files (data writers in the real on-disk formats)."""
