"""The ``mtc`` command line: thin typer commands over the ``mtc`` library."""
