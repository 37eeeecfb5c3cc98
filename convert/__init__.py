"""Offline conversion of raw text to MosaicML Streaming (MDS) shards with word-boundary information."""
