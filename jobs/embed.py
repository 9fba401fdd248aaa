"""`ray job submit --working-dir . -- python jobs/embed.py ARGS`: runs `mtc embed ARGS` as a Ray job."""

import sys

import typer

from mtc_cli.app import app

if __name__ == "__main__":
    typer.main.get_command(app).commands["embed"].main(sys.argv[1:], prog_name="jobs/embed.py")
