"""Real Wikipedia extracts from ../shared for the conversion tests."""

from __future__ import annotations

import pytest

from tests.conftest import shared_path


@pytest.fixture(scope="session")
def wiki_files() -> list[str]:
    return [str(shared_path("corpora/wikipedia/enwiki2021_wiki_00")),
            str(shared_path("corpora/wikipedia/enwiki2021_wiki_01"))]
