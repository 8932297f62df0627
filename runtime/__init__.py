"""visa-edge runtime: models, loaders, backends, trackers, streaming and CLI."""
