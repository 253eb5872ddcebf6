"""Run one training stage of a pipeline: skip it when current, resume it when interrupted.

    python scripts/stage.py [--after=FILE ...] --config configs/fashion_mnist/ksae.yaml \
        [--config ...] [--key value ...]

``--after=FILE`` names an output of an earlier stage that this one reads (the k-sparse AE's
``results.json``, the activation cache's stamp); every other argument goes to ``train.py``. The run
folder must be pinned (``run.version``). Nothing found in the folder is trusted, and nothing is
deleted: unreadable state is renamed ``<file>.corrupt-N``, a folder that cannot be resumed
``<folder>.stale-N``; each such move is one line. Then:
- ``results.json`` readable and recording the sha256 of this very config, the saved
  ``config.yaml`` equal to the composed config, and no ``--after`` file newer than that run's start
  (``config.yaml`` is written when a run starts or resumes) → skipped;
- a folder from a different config (or an unreadable ``config.yaml``), or older than an ``--after``
  file → moved aside, fresh run;
- ``checkpoints/last.ckpt`` loadable (``torch.load(weights_only=True)``) → resumed from it
  (``--ckpt_path``), so a killed run finishes with the numbers an unbroken one would have had (the
  RNG state travels in the checkpoint); an unreadable one is moved aside and the newest loadable
  checkpoint in ``checkpoints/`` is used, or, with none, the folder is moved aside and the run
  starts fresh;
- otherwise a fresh run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as ``python scripts/stage.py``: the project's packages
    sys.path.insert(0, str(ROOT))

from common.checkpoint_io import is_valid_checkpoint, newest_valid_checkpoint  # noqa: E402
from common.errors import UserError, fail  # noqa: E402
from common.run_folder import check_path_component, comparable, config_digest, move_aside  # noqa: E402


def composed_config(args: list[str]) -> dict:
    """The config ``train.py`` would run with, as parsed YAML (``--print_config``)."""
    printed = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--print_config"],
                             capture_output=True, text=True, cwd=Path.cwd())
    if printed.returncode != 0:
        sys.stderr.write(printed.stderr)
        raise SystemExit(printed.returncode)
    config = yaml.safe_load(printed.stdout)
    if not isinstance(config, dict) or not isinstance(config.get("run"), dict):
        raise UserError("train.py --print_config printed no config with a 'run' section")
    return config


def run_dir_of(config: dict) -> Path:
    """``<run.root>/<run.name>/<run.version>``; a ``UserError`` unless the version is pinned and both
    are single folder names."""
    run = config["run"]
    if not run.get("version"):
        raise UserError("a pipeline stage needs a fixed run folder: set run.version (e.g. 'main')")
    name = check_path_component(run.get("name"), "run.name")
    version = check_path_component(run["version"], "run.version")
    return Path(run["root"]) / name / version


def newer_inputs(inputs: list[Path], started: Path) -> list[Path]:
    """The ``inputs`` written after the run whose ``config.yaml`` is ``started`` began (all of them
    when it never began); a missing input is an error, since the stage would read it."""
    missing = [str(path) for path in inputs if not path.exists()]
    if missing:
        raise UserError(f"this stage reads {', '.join(missing)}, which does not exist; run the stage that "
                        f"writes it first (make does)")
    if not started.exists():
        return list(inputs)
    return [path for path in inputs if path.stat().st_mtime > started.stat().st_mtime]


def read_yaml_config(path: Path) -> dict | None:
    """The saved config as a dict, or None when the file is unreadable or not a YAML mapping."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def recorded_digest(path: Path) -> str | None:
    """The ``config_sha256`` a ``results.json`` records, or None when it is unreadable or has none."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    digest = loaded.get("config_sha256") if isinstance(loaded, dict) else None
    return digest if isinstance(digest, str) else None


@dataclass
class Plan:
    """What ``prepare`` decided: ``extra`` ``train.py`` arguments (``None``: up to date, skip) and
    ``moved_aside``, a readable finished run moved out of the way (put back if the new run fails
    before it starts)."""

    extra: list[str] | None
    moved_aside: Path | None = None


def prepare(config: dict, inputs: list[Path], say: Callable[[str], None] = print) -> Plan:
    """Bring the run folder of ``config`` into a state ``train.py`` can run from (``say`` prints each
    one-line decision)."""
    run_dir = run_dir_of(config)
    label = f"[stage {config['run']['name']}]"
    newer = newer_inputs(inputs, run_dir / "config.yaml")
    if not run_dir.exists():
        return Plan([])
    saved_path, results_path = run_dir / "config.yaml", run_dir / "results.json"
    saved = read_yaml_config(saved_path) if saved_path.exists() else None
    if saved_path.exists() and saved is None:
        stale = move_aside(run_dir, "stale")
        say(f"{label} {saved_path} is unreadable: the run is of an unknown config, moved to {stale}")
        return Plan([])
    same = saved is not None and comparable(saved) == comparable(config)
    digest = recorded_digest(results_path) if results_path.exists() else None
    if results_path.exists() and digest is None:
        corrupt = move_aside(results_path, "corrupt")
        say(f"{label} {results_path} is unreadable or records no config: not done, moved to {corrupt}")
    if same and not newer and digest == config_digest(config):
        say(f"{label} up to date ({results_path}), skipped")
        return Plan(None)
    if not same or newer or digest is not None:
        why = ("no config.yaml" if saved is None else "config changed" if not same
               else f"newer input {', '.join(map(str, newer))}" if newer else "results.json is of another config")
        stale = move_aside(run_dir, "stale")
        say(f"{label} {why}: old run moved to {stale}")
        return Plan([], moved_aside=stale)
    checkpoints = run_dir / "checkpoints"
    last = checkpoints / "last.ckpt"
    if last.exists() and not is_valid_checkpoint(last):
        corrupt = move_aside(last, "corrupt")
        fallback = newest_valid_checkpoint(checkpoints)
        if fallback is None:
            stale = move_aside(run_dir, "stale")
            say(f"{label} {last} is unreadable (moved to {corrupt}) and no other checkpoint loads: "
                f"run moved to {stale}, starting fresh")
            return Plan([])
        say(f"{label} {last} is unreadable (moved to {corrupt}): resuming from {fallback}")
        return Plan(["--ckpt_path", str(fallback)])
    if last.exists():
        return Plan(["--ckpt_path", str(last)])
    fallback = newest_valid_checkpoint(checkpoints) if checkpoints.is_dir() else None
    return Plan(["--ckpt_path", str(fallback)] if fallback is not None else [])


def main(argv: list[str]) -> int:
    inputs = [Path(a.split("=", 1)[1]) for a in argv if a.startswith("--after=")]
    args = [a for a in argv if not a.startswith("--after=")]
    config = composed_config(args)
    run_dir = run_dir_of(config)
    label = f"[stage {config['run']['name']}]"
    plan = prepare(config, inputs, say=lambda line: print(line, flush=True))
    if plan.extra is None:
        return 0
    print(f"{label} {'resuming from ' + plan.extra[1] if plan.extra else 'starting'} in {run_dir}", flush=True)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, str(ROOT / "train.py"), *args, *plan.extra])
    print(f"{label} {'done' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - start:.0f} s",
          flush=True)
    if code != 0 and plan.moved_aside is not None and not run_dir.exists():
        plan.moved_aside.rename(run_dir)  # the new config never ran: the finished run stays current
        print(f"{label} the old run is back in {run_dir}", flush=True)
    return code


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except UserError as err:
        fail(str(err))
