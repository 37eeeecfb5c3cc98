"""The training entry point's pieces: run configuration, Trainer builder, callbacks, summary."""
