"""What every reader of raw input shares, local files (``perceiver_stream.convert.sources``) and hub datasets
(``perceiver_stream.convert.hub``) alike: the error for bad input and the counts of what reading saw."""

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

    def source_counts(self) -> dict:
        """The counts every manifest records of its input (``perceiver_stream.convert.output.write_manifest``)."""
        return {"documents_skipped": dict(sorted(self.skipped.items())),
                "undecodable_bytes_replaced": self.replaced_bytes, "files_not_text": self.not_text_files}
