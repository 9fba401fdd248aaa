"""Ray Tune over loss weights and task groupings."""
