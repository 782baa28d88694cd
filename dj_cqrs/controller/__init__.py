"""Controllers: the glue between transports and models."""
