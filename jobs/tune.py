"""`ray job submit --working-dir . -- python jobs/tune.py ARGS`: runs `mtc tune ARGS` as a Ray job."""

import sys

import typer

from mtc_cli.app import app

if __name__ == "__main__":
    typer.main.get_command(app).commands["tune"].main(sys.argv[1:], prog_name="jobs/tune.py")
