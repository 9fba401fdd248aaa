"""Scoring structure databases with a registered model through Ray Data."""
