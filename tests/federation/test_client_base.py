"""The ClientApps' shared factory: ``query`` answered with the client's name, a failing handler
turned into an Error reply."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict

from feddymem.federation import wire
from feddymem.federation.client_base import (
    CLIENT_ERROR_CODE,
    SiteOf,
    build_site_app,
    identity_record,
)


def _message(kind: str) -> Message:
    return Message(RecordDict(), dst_node_id=7, message_type=kind)


def _fails(message: Message, context: Context, settings: SiteOf) -> Message:
    raise RuntimeError("broken handler")


def _echo_name(message: Message, context: Context, settings: SiteOf) -> Message:
    name = settings(context).name
    assert name is not None
    return Message(RecordDict({wire.CLIENT: identity_record(name, "m.pt")}), reply_to=message)


def test_site_app_answers_query_train_and_evaluate(tmp_path: Path) -> None:
    app = build_site_app(train=_echo_name, evaluate=_fails)
    node_config = {"name": "site-a", "data": str(tmp_path), "work-dir": str(tmp_path / "work")}
    context = Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={}
    )
    identify = app(_message("query"), context)
    assert wire.identity_from_content(identify.content).name == "site-a"
    trained = wire.identity_from_content(app(_message("train"), context).content)
    assert (trained.name, trained.model_file) == ("site-a", "m.pt")
    failed = app(_message("evaluate"), context)
    assert failed.has_error()
    assert failed.error.code == CLIENT_ERROR_CODE
    assert "RuntimeError: broken handler" in (failed.error.reason or "")


def test_a_site_draws_its_noise_key_once_per_run_and_keeps_it_to_itself(tmp_path: Path) -> None:
    import stat

    from feddymem.federation.client_base import ClientStateError, site_noise_key

    run = tmp_path / "site-a" / "fed-r1"
    key = site_noise_key(run)
    assert key > 0 and site_noise_key(run) == key  # a resumed run draws the same noise
    assert stat.S_IMODE((run / "noise.key").stat().st_mode) == 0o600
    assert site_noise_key(tmp_path / "site-a" / "fed-r2") != key  # another run, another key
    (run / "noise.key").write_text("not a key\n")
    with pytest.raises(ClientStateError, match="not a noise key"):
        site_noise_key(run)
