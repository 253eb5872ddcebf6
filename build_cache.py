"""Build or check the activation cache from YAML, as a pipeline stage of its own.

    python build_cache.py --config configs/fashion_mnist/activations.yaml [--data.init_args.rebuild never]
    python build_cache.py --config configs/imagenet/activations.yaml --config configs/imagenet/shards.yaml \
        --trainer.devices 8 --trainer.num_nodes 2 --trainer.strategy ddp

Reads the ``data:`` section (an ``ActivationDataModule``); other sections of a composed training
config (``model``, ``run``, ...) are accepted and ignored. Extracts only the entries that are
missing or stale, then prints one line per (backbone, split) and the feature widths.

``--store single`` (default): one float32 tensor file per (backbone, split), built in this process.
``--store shards``: fixed-size ``.npy`` shards (``features.shards``) written by a Lightning
``predict`` run; of ``trainer:`` only the placement options (accelerator, devices, num_nodes,
strategy, enable_progress_bar) are read. Each rank extracts whole shards; a rerun extracts only
missing or damaged shards. See docs/at_scale.md.
"""

from __future__ import annotations

import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import lightning as L
import yaml

from jsonargparse import ActionConfigFile, ArgumentParser

from common.auto_options import start_up
from common.cli import check_config_files, info_logs_to_stdout, parse_or_fail, warnings_kept_until_done
from common.errors import run_cli
from callbacks.shard_writer import ShardWriter
from common.errors import UserError
from common.io import check_writable_dir
from components.backbones import FeatureExtractor, default_layer
from datamodules.activations import ActivationDataModule
from datamodules.shard_extraction import ShardExtractionData, split_identity
from features.activation_cache import SPLITS, FeatureNormalizer
from features.shards import DEFAULT_SHARD_ROWS, ShardStore
from lightning_modules.feature_extraction import FeatureExtraction

#: the ``trainer:`` options ``--store shards`` reads (a training config's others are ignored)
PLACEMENT = ("accelerator", "devices", "num_nodes", "strategy", "enable_progress_bar")


@dataclass
class ShardOptions:
    """How ``--store shards`` writes each (backbone, split): rows per shard and their dtype.

    Attributes:
        rows: rows per shard (the last shard of a split holds the rest); a multiple of
            ``data.extract_batch_size`` keeps every forward pass full.
        dtype: ``float16`` (half the disk and page cache) or ``float32``.
    """

    rows: int = DEFAULT_SHARD_ROWS
    dtype: Literal["float16", "float32"] = "float16"


def build_parser() -> ArgumentParser:
    """``--config``, ``seed_everything`` (linked to ``data.init_args.seed``) and ``data``."""
    parser = ArgumentParser(description=__doc__, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file(s), composed in order.")
    parser.add_argument("--seed_everything", type=int | bool | None, default=0, help="Seeds the shuffling.")
    parser.add_subclass_arguments(ActivationDataModule, "data", required=True, help="The activation cache.")
    parser.add_argument("--store", type=Literal["single", "shards"], default="single",
                        help="single: one tensor file per (backbone, split); shards: a sharded store "
                             "written by a Lightning predict run (multi-device, resumable).")
    parser.add_class_arguments(ShardOptions, "shards", help="Shard size and dtype (--store shards).")
    parser.add_argument("--trainer", type=dict | None, default=None,
                        help="With --store shards: Trainer placement, e.g. --trainer.devices 8 "
                             "--trainer.strategy ddp; otherwise ignored.")
    for ignored in ("model", "run", "wandb", "ckpt_path", "optimizer", "lr_scheduler"):
        parser.add_argument(f"--{ignored}", type=Any, default=None, help="Ignored (training sections).")
    parser.link_arguments("seed_everything", "data.init_args.seed",
                          compute_fn=lambda s: s if isinstance(s, int) and not isinstance(s, bool) else 0)
    return parser


def main(args: list[str] | None = None) -> ActivationDataModule:
    """Parse ``args`` (default: ``sys.argv``), build/validate the cache, print a summary."""
    info_logs_to_stdout()
    with warnings_kept_until_done():
        check_config_files(args)
        parser = build_parser()
        config = parse_or_fail(lambda: parser.parse_args(args))
        datamodule: ActivationDataModule = parse_or_fail(lambda: parser.instantiate(config)).data
    start_up()
    start = time.perf_counter()
    if config.store == "shards":
        build_shards(datamodule, config.trainer or {}, ShardOptions(**vars(config.shards)))
        return datamodule
    datamodule.prepare_data()
    for status in datamodule.last_build:
        detail = f"{status.seconds:7.1f} s  ({status.reason})" if status.action == "built" else ""
        print(f"{status.name:>24s}/{status.split:<5s} {status.action:6s} {status.rows:7d} rows {detail}")
    dims = ", ".join(f"{name}: {dim}" for name, dim in datamodule.feature_dims.items())
    print(f"activation cache ready in {datamodule.cache_dir} ({time.perf_counter() - start:.1f} s); "
          f"feature_dims {{{dims}}}")
    return datamodule


def placement(trainer: dict) -> dict:
    """The placement options of a ``trainer:`` section, command-line strings read as YAML values."""
    return {k: yaml.safe_load(v) if isinstance(v, str) else v for k, v in trainer.items() if k in PLACEMENT}


def shard_stores(dm: ActivationDataModule, name: str, options: ShardOptions,
                 identities: dict[str, str]) -> dict[str, ShardStore]:
    """split → the store of backbone ``name`` at ``<cache_dir>/<name>/<split>/``, keyed by what its
    rows are (the single-file cache key, the split's image identity and the normalisation)."""
    key = dm.cache_key(name)
    dim = dm.feature_dims[name]
    return {split: ShardStore(dm.cache_dir / name / split, dim, options.dtype, options.rows,
                              key={**key, "split": split, "images": identities[split],
                                   "normalization": dm.cache.normalization})
            for split in SPLITS}


def build_shards(dm: ActivationDataModule, trainer: dict, options: ShardOptions) -> list[dict]:
    """Extract every (backbone, split) into shards with ``trainer.predict``; only shards that are
    missing or damaged are extracted. Rank 0 finalizes each store after a barrier and prints one
    line per store; returns the finalized indexes (on rank 0; empty elsewhere)."""
    if dm.cache.normalization == "standardize":
        raise UserError("--store shards writes rows as they are extracted, and standardize needs the "
                        "whole train split first; use normalization l2 or none with shards")
    if options.rows < 1:
        raise UserError(f"shards.rows must be at least 1, got {options.rows}")
    check_writable_dir(dm.cache_dir, "data.cache_dir")
    for spec in dm.specs.values():
        if spec.checkpoint is not None:
            dm._checkpoint_sha256(spec.checkpoint)  # a missing file fails before any work
    dm.images.setup()
    identities = {split: split_identity(dm.images, split) for split in SPLITS}
    warnings.filterwarnings("ignore", message=".*custom batch sampler.*")  # ShardBatches returns every row
    warnings.filterwarnings("ignore", message=".*across ranks is zero.*")  # ranks with no shard left
    writer = ShardWriter()
    defaults = {"accelerator": "auto", "devices": 1, "enable_progress_bar": dm.progress}
    pl_trainer = L.Trainer(**{**defaults, **placement(trainer)}, logger=False, enable_checkpointing=False,
                           enable_model_summary=False, use_distributed_sampler=False, callbacks=[writer],
                           inference_mode=True)
    on_bad_image = getattr(dm.images, "on_bad_image", "error")
    indexes = []
    for name, spec in dm.specs.items():
        writer.stores = stores = shard_stores(dm, name, options, identities)
        extractor = FeatureExtractor(dm.load_backbone_network(name), spec.layer or default_layer(spec.arch),
                                     spec.arch)
        module = FeatureExtraction(extractor, dm.images.transform, FeatureNormalizer(dm.cache.normalization),
                                   dm.cache_key(name)["precision"], on_bad_image)
        data = ShardExtractionData(dm.images, stores, dm.extract_batch_size)
        before, began = len(writer.written), time.perf_counter()
        pl_trainer.predict(module, datamodule=data, return_predictions=False)
        pl_trainer.strategy.barrier("shards_written")
        if pl_trainer.is_global_zero:
            seconds = time.perf_counter() - began
            print(f"{name}: extracted {data.todo_rows} rows on {pl_trainer.world_size} processes in "
                  f"{seconds:.2f} s ({data.todo_rows / seconds:.1f} images/s)")
            for split, store in stores.items():
                index = store.finalize(data.totals[split])
                indexes.append(index)
                mine = sum(1 for s, _ in writer.written[before:] if s == split)
                skipped = f", {index['bad_rows']} undecodable images skipped (bad_rows)" if index["bad_rows"] else ""
                print(f"{name:>24s}/{split:<5s} shards {len(index['shards']):5d} ({mine} written by rank 0 "
                      f"of {pl_trainer.world_size}) {index['rows']:9d} rows{skipped}")
        pl_trainer.strategy.barrier("shards_finalized")
    if pl_trainer.is_global_zero:
        print(f"shard store ready in {dm.cache_dir} (<name>/<split>/index.json); feature_dims "
              f"{{{', '.join(f'{n}: {d}' for n, d in dm.feature_dims.items())}}}", file=sys.stdout)
    return indexes


if __name__ == "__main__":
    run_cli(main)
