"""Training: the per-worker loop, the Ray Train driver, metrics, plots."""
