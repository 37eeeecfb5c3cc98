"""Pretrain a Perceiver IO MLM or fine-tune a classifier: ``composer train.py yamls/mlm_base.yaml [key=value ...]``
(``yamls/clf_*.yaml``: ``task: classification``).

The checkout's entry point; installed, the same one is ``perceiver-train`` (``perceiver_stream.train.cli``).
``python train.py CONFIG [key=value ...]`` runs one process; ``--summary`` prints the resolved plan and exits.
"""

from perceiver_stream.train import cli


def main(argv: list[str] | None = None) -> None:
    cli.main(argv, prog="train.py")


if __name__ == "__main__":
    main()
