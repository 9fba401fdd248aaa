"""A user's mistake reads as one line, with the user's own text intact."""

import pytest
import typer

from mtc.errors import MtcError
from mtc_cli.common import user_errors


def test_a_message_keeps_square_brackets(capsys):
    with pytest.raises(typer.Exit) as stopped, user_errors():
        raise MtcError("spec.yaml with --set bases=[equal_compute] seeds=[2]: seeds: at least 2 items")
    assert stopped.value.exit_code == 2
    assert "--set bases=[equal_compute] seeds=[2]: seeds" in capsys.readouterr().err
