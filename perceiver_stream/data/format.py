"""The on-disk sample format shared by the converter (writer) and the data pipeline (reader).

Each MDS sample holds ``input_ids`` (uint16 or int32) and ``token_type`` (uint8), one code per token.
"""

WORD_CONTINUATION = 0  # a later token of the word the previous token belongs to
WORD_START = 1  # first token of a word (from the fast tokenizer's word_ids())
SPECIAL = 2  # separator or special token: never masked
PADDING = 3  # padding after a final partial sample: never attended to

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "perceiver-stream-mds/1"
SPLITS = ("train", "val")
