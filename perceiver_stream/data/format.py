"""The on-disk sample format shared by the converter (writer) and the data pipeline (reader).

Each MDS sample holds ``input_ids`` (uint16 or int32) and ``token_type`` (uint8), one code per token; a sample of
labelled shards (``perceiver-convert labelled``) also its ``label``.
"""

import numpy as np

WORD_CONTINUATION = 0  # a later token of the word the previous token belongs to
WORD_START = 1  # first token of a word (from the fast tokenizer's word_ids())
SPECIAL = 2  # separator or special token: never masked
PADDING = 3  # padding after a final partial sample: never attended to

IDS_COLUMN = "input_ids"  # the MDS columns of a sample
TYPES_COLUMN = "token_type"
LABEL_COLUMN = "label"  # labelled shards only: the index of the sample's label in the manifest's "labels"

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "perceiver-stream-mds/1"
SPLITS = ("train", "val")


def is_word_token(token_type: np.ndarray) -> np.ndarray:
    """True at tokens of words (start or continuation): the tokens masking may select."""
    return (token_type == WORD_START) | (token_type == WORD_CONTINUATION)
