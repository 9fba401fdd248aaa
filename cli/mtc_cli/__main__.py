"""``python -m mtc_cli``: the same as the ``mtc`` command."""

from mtc_cli.app import main

main()
