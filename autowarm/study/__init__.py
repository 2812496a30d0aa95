"""The overnight study: :func:`autowarm.tune` on optuna, seeded by the probe."""
