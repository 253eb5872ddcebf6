"""Run one training stage of a pipeline: skip it when current, resume it when interrupted.

    python scripts/stage.py [--after=FILE ...] --config configs/fashion_mnist/ksae.yaml \
        [--config ...] [--key value ...]

``--after=FILE`` names an output of an earlier stage that this one reads (the k-sparse AE's
``results.json``, the activation cache's stamp); every other argument goes to ``train.py``. The run
folder must be pinned (``run.version``). Then:
- ``results.json`` present, the saved ``config.yaml`` equal to the composed config and no
  ``--after`` file newer than that run's start (``config.yaml`` is written when a run starts or
  resumes) → skipped;
- a folder from a different config, or older than an ``--after`` file → moved aside to
  ``<folder>.stale-N`` (never deleted), fresh run;
- ``checkpoints/last.ckpt`` present → resumed from it (``--ckpt_path``), so a killed run finishes
  with the numbers an unbroken one would have had (the RNG state travels in the checkpoint);
- otherwise a fresh run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
IGNORED_KEYS = ("ckpt_path",)


def composed_config(args: list[str]) -> dict:
    """The config ``train.py`` would run with, as parsed YAML (``--print_config``)."""
    printed = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "--print_config"],
                             capture_output=True, text=True, cwd=Path.cwd())
    if printed.returncode != 0:
        sys.stderr.write(printed.stderr)
        raise SystemExit(printed.returncode)
    return comparable(yaml.safe_load(printed.stdout))


def comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in IGNORED_KEYS}


def run_dir_of(config: dict) -> Path:
    run = config["run"]
    if not run.get("version"):
        print("error: a pipeline stage needs a fixed run folder: set run.version (e.g. 'main')",
              file=sys.stderr)
        raise SystemExit(2)
    return Path(run["root"]) / run["name"] / str(run["version"])


def newer_inputs(inputs: list[Path], started: Path) -> list[Path]:
    """The ``inputs`` written after the run whose ``config.yaml`` is ``started`` began (all of them
    when it never began); a missing input is an error, since the stage would read it."""
    missing = [str(path) for path in inputs if not path.exists()]
    if missing:
        print(f"error: this stage reads {', '.join(missing)}, which does not exist; run the stage that "
              f"writes it first (make does)", file=sys.stderr)
        raise SystemExit(2)
    if not started.exists():
        return list(inputs)
    return [path for path in inputs if path.stat().st_mtime > started.stat().st_mtime]


def main(argv: list[str]) -> int:
    inputs = [Path(a.split("=", 1)[1]) for a in argv if a.startswith("--after=")]
    args = [a for a in argv if not a.startswith("--after=")]
    config = composed_config(args)
    run_dir = run_dir_of(config)
    saved = run_dir / "config.yaml"
    same = saved.exists() and comparable(yaml.safe_load(saved.read_text())) == config
    newer = newer_inputs(inputs, saved)
    label = f"[stage {config['run']['name']}]"
    if same and not newer and (run_dir / "results.json").exists():
        print(f"{label} up to date ({run_dir / 'results.json'}), skipped", flush=True)
        return 0
    if run_dir.exists() and (not same or newer):
        n = 1
        while run_dir.with_name(f"{run_dir.name}.stale-{n}").exists():
            n += 1
        stale = run_dir.with_name(f"{run_dir.name}.stale-{n}")
        run_dir.rename(stale)
        why = "config changed" if not same else f"newer input {', '.join(map(str, newer))}"
        print(f"{label} {why}: old run moved to {stale}", flush=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    extra = ["--ckpt_path", str(last)] if last.exists() else []
    print(f"{label} {'resuming from ' + str(last) if extra else 'starting'} in {run_dir}", flush=True)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, str(ROOT / "train.py"), *args, *extra])
    print(f"{label} {'done' if code == 0 else f'FAILED (exit {code})'} in {time.perf_counter() - start:.0f} s",
          flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
