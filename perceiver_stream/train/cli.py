"""``perceiver-train``: pretrain a Perceiver IO MLM or fine-tune a classifier from a yaml and ``key=value`` overrides.

``perceiver-train mlm_base data.streams.wikipedia.local=DIR ...`` takes a packaged recipe by name (``mlm_base``,
``mlm_tiny``, ``clf_rotten_tomatoes``, ...; ``--recipes`` lists them) or a yaml file's path. One process trains on
one device; ``composer -n 8 -m perceiver_stream.train.cli mlm_base ...`` launches one process per device, as
``composer train.py yamls/mlm_base.yaml ...`` does from a checkout. ``--summary`` prints the resolved plan
(parameters, FLOPs per sample, batch plan, streams, parallelism) and exits without training.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import TYPE_CHECKING

from perceiver_stream.train.lifetime import end_with_parent_if_spawned

if TYPE_CHECKING:
    from perceiver_stream.train.config import TrainConfig
    from perceiver_stream.train.lease import Lease

# A process the rank spawns runs the main script first (as __mp_main__), and this is its first import: it asks to
# die with the rank (perceiver_stream.train.lifetime) before anything else, and the trainer's imports wait in main(),
# so Composer's upload manager starts in a fraction of a second with a few MB instead of ~10 s and ~700 MB of imports.
end_with_parent_if_spawned()

PROG = "perceiver-train"


def main(argv: list[str] | None = None, prog: str = PROG) -> None:
    from perceiver_stream.checkpoint import CheckpointError
    from perceiver_stream.config import ConfigError, load, recipe_names, resolve_config
    from perceiver_stream.data import DataError
    from perceiver_stream.remote import RemoteError
    from perceiver_stream.train.config import build_train_config
    from perceiver_stream.train.lease import SaveFolderInUse

    parser = argparse.ArgumentParser(prog=prog, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="a packaged recipe's name (mlm_base, mlm_tiny, ...) or a yaml file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (omegaconf dot-list; key=null: off)")
    parser.add_argument("--summary", action="store_true", help="print the plan and exit")
    parser.add_argument("--recipes", action="store_true", help="list the packaged recipes and exit")
    args = parser.parse_intermixed_args(argv)
    if args.recipes:
        print("\n".join(recipe_names()))
        return
    if args.config is None:
        parser.error("the following arguments are required: config")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = build_train_config(load(resolve_config(args.config), args.overrides))
        if args.summary:
            from composer.utils import dist

            from perceiver_stream.train.summary import summary

            print(summary(cfg, dist.get_world_size()))
            return
        train(cfg, prog)
    except (ConfigError, DataError, CheckpointError, RemoteError, SaveFolderInUse) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


def train(cfg: TrainConfig, prog: str) -> None:
    """Hold the save folder (global rank 0), build the trainer and fit; a failure a user can act on is one line."""
    from composer.utils import dist

    from perceiver_stream.train.lease import held
    from perceiver_stream.train.trainer import check_save_folder, save_folder

    rank_zero = dist.get_global_rank() == 0
    if rank_zero:
        check_save_folder(cfg)  # before its lock goes into it
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        with held(save_folder(cfg) if rank_zero else None, cfg.run_name) as lease:
            fit(cfg, lease, prog)
    finally:
        signal.signal(signal.SIGTERM, previous)


def fit(cfg: TrainConfig, lease: Lease | None, prog: str) -> None:
    """Build the trainer and fit, stopping when another run takes the save folder (``lease``, rank 0's)."""
    from perceiver_stream.data import DataError
    from perceiver_stream.train.callbacks import LeaseWatch, NonFiniteLossError
    from perceiver_stream.train.space import full_disk_error
    from perceiver_stream.train.trainer import build_trainer, local_save_folder

    trainer = None
    try:
        trainer = build_trainer(cfg)
        if lease is not None:
            trainer.state.callbacks.append(LeaseWatch(lease))
        if cfg.eval_first and trainer.state.timestamp.batch.value == 0:
            trainer.eval()
        trainer.fit()
    except (NonFiniteLossError, DataError) as e:  # a loss that is not finite, a shard that cannot be downloaded
        if isinstance(e, DataError) and trainer is None:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        parameters = 0 if trainer is None else sum(p.numel() for p in trainer.state.model.parameters())
        if (full := full_disk_error(e, local_save_folder(cfg), parameters)) is not None:
            raise full from None
        stop_if_a_peer_is_lost(e, cfg.dist_timeout, prog)  # another rank gone, silent, or never come
        raise
    trainer.close()


def _terminated(signum: int, frame) -> None:
    """SIGTERM (a scheduler's, the launcher's) unwinds like an error, so the save folder's lock is released."""
    sys.exit(128 + signum)


def stop_if_a_peer_is_lost(error: Exception, dist_timeout: float, prog: str) -> None:
    """Exit with one line when ``error`` says that another rank of the run is gone; otherwise return."""
    from perceiver_stream.train.peers import lost_peer_message

    message = lost_peer_message(error, dist_timeout)
    if message is not None:
        print(f"{prog}: error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
