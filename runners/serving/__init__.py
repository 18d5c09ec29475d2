"""Using a registered model: predict and evaluate."""
