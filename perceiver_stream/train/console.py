"""The console's metric lines when ``progress_bar`` is off: the run's progress, not every parameter's norm."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

from composer.loggers import ConsoleLogger

OPTIMIZER_NORMS = ("l2_norm/", "cosine/")  # OptimizerMonitor's prefixes; its per-parameter keys end in the name


def per_parameter(key: str) -> bool:
    """Whether ``key`` is one of OptimizerMonitor's per-parameter metrics (the ``.../global`` ones are the run's)."""
    return key.startswith(OPTIMIZER_NORMS) and not key.endswith("/global")


class RunConsole(ConsoleLogger):
    """Composer's console lines without the per-parameter norms (over 400 lines at each interval for the Base model;
    TensorBoard and W&B keep them) and without tables (the fill-mask callback prints its predictions as log lines, and
    a table reaches the console as one JSON line)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics({key: value for key, value in metrics.items() if not per_parameter(key)}, step)

    def log_table(self, *args: Any, **kwargs: Any) -> None:
        """Tables go to TensorBoard and W&B only."""


@contextlib.contextmanager
def console_given() -> Iterator[None]:
    """Composer warns when a ``ConsoleLogger`` comes through ``loggers`` (its own console arguments then go unused):
    ours comes that way on purpose, built from the same settings."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specifying the ConsoleLogger via `loggers`")
        yield
