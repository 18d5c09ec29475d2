"""The MLflow model registry: promote (one run, an ensemble, imported weights) and the packaged model."""
