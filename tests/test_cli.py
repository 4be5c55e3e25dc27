import logging

import pytest

from kotune import cli
from kotune.logs import redact

pytestmark = pytest.mark.unit


def test_user_errors_exit_2_with_a_message_not_a_traceback(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  sorce: x\n")
    assert cli.main(["fetch", "--params", str(params), "--out", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert "kotune fetch: error:" in err and "did you mean 'source'" in err and "Traceback" not in err


def test_unknown_command_shows_usage(capsys):
    assert cli.main(["trian"]) == 2
    assert "usage: kotune" in capsys.readouterr().err


def test_secrets_never_reach_a_log(monkeypatch, caplog):
    token = "hf_" + "A1b2C3d4" * 5
    monkeypatch.setenv("HF_TOKEN", token)
    assert token not in redact(f"Authorization: Bearer {token}")
    assert "hf_" not in redact("hf_abcdefghijklmnopqrstuvwxyz123")
    cli.setup_logging()
    record = logging.LogRecord("kotune", logging.INFO, __file__, 1, "pushing with %s", (token,), None)
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            f.filter(record)
    assert token not in record.getMessage() and "<HF_TOKEN>" in record.getMessage()
