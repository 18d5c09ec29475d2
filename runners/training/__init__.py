"""Training one trial: the trial function, its metrics, constraints checked before any epoch, scratch space."""
