"""Plumbing shared by every part of the project: user-facing errors and atomic file writes."""
