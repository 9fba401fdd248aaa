"""`ray job submit --working-dir . -- python jobs/train.py ARGS`: runs `mtc train ARGS` as a Ray job."""

import sys

import typer

from mtc_cli.app import app

if __name__ == "__main__":
    typer.main.get_command(app).commands["train"].main(sys.argv[1:], prog_name="jobs/train.py")
