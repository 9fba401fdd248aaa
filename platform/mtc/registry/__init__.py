"""Models in the MLflow Model Registry: the pyfunc flavour, logging, aliases, loading."""
