"""A search: the driver, the Ray cluster, MLflow tracking, schedulers and searchers, fidelity and refit, warm start, Pareto front and plots."""
