"""What every reader of raw input shares, local files (``convert.sources``) and hub datasets (``convert.hub``)
alike: the error for bad input and the counts of what reading saw."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


class InputError(ValueError):
    """Bad input: the message names the file (and line) and what was expected."""


@dataclass
class Stats:
    """What reading saw: documents skipped by reason, bytes replaced while decoding.

    With ``Source.documents(share=...)`` the reason ``"empty"`` counts only the share's documents; every other
    count covers all documents, because each share reads them all.
    """

    skipped: Counter = field(default_factory=Counter)
    replaced_bytes: int = 0
    decoded_bytes: Counter = field(default_factory=Counter)  # per file
    replaced_by_file: Counter = field(default_factory=Counter)
    not_text_files: list[str] = field(default_factory=list)

    def worst_files(self, max_fraction: float) -> list[tuple[str, float]]:
        """Files whose share of replaced (undecodable) bytes exceeds ``max_fraction``, worst first."""
        fractions = {f: n / max(self.decoded_bytes[f], 1) for f, n in self.replaced_by_file.items()}
        return sorted(((f, x) for f, x in fractions.items() if x > max_fraction), key=lambda fx: -fx[1])
