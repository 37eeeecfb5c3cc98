"""Pretrain a Perceiver IO MLM or fine-tune a classifier: ``composer train.py yamls/mlm_base.yaml [key=value ...]``
(``yamls/clf_*.yaml``: ``task: classification``).

``python train.py CONFIG [key=value ...]`` runs one process; ``--summary`` prints the resolved plan
(parameters, FLOPs per sample, batch plan, streams, parallelism) and exits without training.
"""

from __future__ import annotations

import argparse
import logging
import sys

from perceiver_stream.train.lifetime import end_with_parent_if_spawned

# A process the rank spawns runs this file's top level first (as __mp_main__): it asks to die with the rank
# (perceiver_stream.train.lifetime) before anything else, and the trainer's imports wait in main(), so Composer's
# upload manager starts in a fraction of a second with a few MB instead of ~10 s and ~700 MB of imports.
end_with_parent_if_spawned(__name__)


def main(argv: list[str] | None = None) -> None:
    from perceiver_stream.checkpoint import CheckpointError
    from perceiver_stream.config import ConfigError, load
    from perceiver_stream.data import DataError
    from perceiver_stream.remote import RemoteError
    from perceiver_stream.train.callbacks import NonFiniteLossError
    from perceiver_stream.train.config import build_train_config

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="yaml file, e.g. yamls/mlm_base.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (omegaconf dot-list; key=null: off)")
    parser.add_argument("--summary", action="store_true", help="print the plan and exit")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = None
    try:
        cfg = build_train_config(load(args.config, args.overrides))
        from composer.utils import dist

        from perceiver_stream.train.trainer import build_trainer

        if args.summary:
            from perceiver_stream.train.summary import summary

            print(summary(cfg, dist.get_world_size()))
            return
        trainer = build_trainer(cfg)
    except (ConfigError, DataError, CheckpointError, RemoteError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # another rank that never came (rendezvous)
        if cfg is not None:
            stop_if_a_peer_is_lost(e, cfg.dist_timeout)
        raise
    try:
        if cfg.eval_first and trainer.state.timestamp.batch.value == 0:
            trainer.eval()
        trainer.fit()
    except (NonFiniteLossError, DataError) as e:  # a loss that is not finite, a shard that cannot be downloaded
        print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # another rank gone or silent in a collective
        stop_if_a_peer_is_lost(e, cfg.dist_timeout)
        raise
    trainer.close()


def stop_if_a_peer_is_lost(error: Exception, dist_timeout: float) -> None:
    """Exit with one line when ``error`` says that another rank of the run is gone; otherwise return."""
    from perceiver_stream.train.peers import lost_peer_message

    message = lost_peer_message(error, dist_timeout)
    if message is not None:
        print(f"train.py: error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
