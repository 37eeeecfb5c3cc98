"""The packaged recipes: this folder installs as ``perceiver_stream.recipes`` (``perceiver-train mlm_tiny``)."""
