"""The contract every ``analyze.py`` job follows."""

from __future__ import annotations

from pathlib import Path


class Analysis:
    """An analysis job built from YAML by ``analyze.py``: ``run()`` writes a report, returns its folder.

    Subclasses validate their inputs in ``__init__`` or at the start of ``run`` (raising
    ``common.errors.UserError``) and write every output atomically, so a failed run leaves no partial
    report behind.
    """

    def run(self) -> Path:
        raise NotImplementedError
