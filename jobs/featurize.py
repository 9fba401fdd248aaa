"""`ray job submit --working-dir . -- python jobs/featurize.py ARGS`: runs `mtc featurize ARGS` as a Ray job."""

import sys

import typer

from mtc_cli.app import app

if __name__ == "__main__":
    typer.main.get_command(app).commands["featurize"].main(sys.argv[1:], prog_name="jobs/featurize.py")
