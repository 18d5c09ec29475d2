"""Runners: data, the trial, the search (Ray Tune), tracking (MLflow), registry, CLI.

Only this package knows Ray and MLflow; `fer_models` and `search_spaces` never import it.
"""
