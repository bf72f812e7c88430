"""One real deployment on loopback: a SuperLink with TLS and SuperNode authentication, two
registered sites bound to their keys in the spec, an impostor (a registered key claiming
site-a's name, refused by the ServerApp) and a rogue node (unregistered key, refused by the
SuperLink), `flwr run`.

Two rounds: round 0 (memories from the untrained generators) and one training round against
M_g (``rounds = 1`` in the spec), then the evaluation. A deployed SuperNode starts a fresh
ClientApp process per message (about 10 s of imports each on this 2-core machine), so every
message counts.

Everything runs as separate processes as on separate machines (each with its own FLWR_HOME);
the test reads the run's results.json (``flwr run`` exits 0 even when a run fails) and stops
every process it started, by pid, in a finally block.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from certs import make_certificates, make_node_key
from fakes import smoke_federation
from processes import ProcessGroup, descendants, free_port, wait_for_port

from feddymem.federation.simulation import run_federation

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "deploy" / "feddymem-app"
BIN = Path(sys.executable).parent
SITES = ("site-a", "site-b")
RUN_DEADLINE_S = 300.0  # about 120 s on an idle 2-core machine


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_DISABLE_UPDATE_CHECK="1",
        FLWR_TELEMETRY_ENABLED="0",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the helpers start flwr-* by name
        OMP_NUM_THREADS="1",
    )
    home.mkdir(parents=True, exist_ok=True)
    return env


def _flwr(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [str(BIN / "flwr"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"flwr {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


@pytest.mark.slow
def test_two_sites_with_tls_node_auth_and_flwr_run(tmp_path: Path) -> None:
    spec = smoke_federation(tmp_path / "fed")
    spec.write_text(spec.read_text().replace("rounds = 2", "rounds = 1"))
    clean_spec = spec.with_name("clean.toml")  # the same federation, with nobody attacking it
    clean_spec.write_text(spec.read_text())
    certs = make_certificates(tmp_path / "certs")
    out = tmp_path / "run"
    link_port = free_port()
    group = ProcessGroup(tmp_path)
    try:
        link = group.start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--ssl-ca-certfile",
                str(certs.ca),
                "--ssl-certfile",
                str(certs.server_cert),
                "--ssl-keyfile",
                str(certs.server_key),
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
                "--disable-runtime-dependency-installation",
                "--enable-supernode-auth",
            ],
            env=_env(tmp_path / "home-superlink"),
        )
        wait_for_port(link_port, timeout=60, process=link)
        cli_env = _env(tmp_path / "home-cli")
        (tmp_path / "home-cli" / "config.toml").write_text(
            "[superlink]\n"
            'default = "fed"\n\n'
            "[superlink.fed]\n"
            f'address = "127.0.0.1:{link_port}"\n'
            f'root-certificates = "{certs.ca}"\n',
            encoding="utf-8",
        )
        # every site's key registered; the spec binds each name to its key's node id. An
        # impostor with a registered key of its own claims site-a's name; a rogue node's key
        # was never registered.
        keys = {who: make_node_key(tmp_path / "keys", who) for who in (*SITES, "impostor", "rogue")}
        node_ids = {}
        for who in (*SITES, "impostor"):
            registered = json.loads(
                _flwr(
                    ["supernode", "register", str(keys[who][1]), "fed", "--format", "json"], cli_env
                )
            )
            node_ids[who] = int(registered["node-id"])
        text = spec.read_text()
        for site in SITES:
            text = text.replace(f'name = "{site}"', f'name = "{site}"\nnode_id = {node_ids[site]}')
        spec.write_text(text)
        nodes = {}
        for who, claims in (*((s, s) for s in SITES), ("impostor", "site-a"), ("rogue", "site-b")):
            data, work = spec.parent / "data" / claims, tmp_path / "work" / who
            nodes[who] = group.start(
                f"supernode-{who}",
                [
                    str(BIN / "flower-supernode"),
                    "--root-certificates",
                    str(certs.ca),
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--port",
                    str(free_port()),
                    "--auth-supernode-private-key",
                    str(keys[who][0]),
                    "--node-config",
                    f'name="{claims}" data="{data}" work-dir="{work}"',
                ],
                env=_env(tmp_path / f"home-{who}"),
            )
        started = json.loads(
            _flwr(
                [
                    "run",
                    str(APP),
                    "fed",
                    "--format",
                    "json",
                    "--run-config",
                    f'spec="{spec}" out="{out}"',
                ],
                cli_env,
            )
        )
        assert started["success"] and started["fab-id"] == "feddymem/feddymem-app"
        run_id = started["run-id"]

        # Poll the result file (cheap); each `flwr` call costs CPU the clients need.
        deadline = time.monotonic() + RUN_DEADLINE_S
        while not (out / "results.json").is_file() and time.monotonic() < deadline:
            time.sleep(1.0)
        status = ""
        while time.monotonic() < deadline + 30:
            listed = json.loads(
                _flwr(["ls", "fed", "--run-id", run_id, "--format", "json"], cli_env)
            )
            status = listed["runs"][0]["status"]
            if status.startswith("finished"):
                break
            time.sleep(3.0)
        assert status == "finished:completed", f"run status {status!r}\n{group.logs()}"

        results = json.loads((out / "results.json").read_text())
        assert results["status"] == "completed", results["error"]
        assert results["evaluated_clients"] == ["site-a", "site-b"]
        # the unregistered node never got in (Flower's exit code 305: activation refused)
        assert nodes["rogue"].wait(timeout=60) != 0
        rogue_log = (tmp_path / "supernode-rogue.log").read_text(errors="replace")
        assert "Exit Code: 305" in rogue_log and "Failed to activate SuperNode" in rogue_log
        # its SuperExec helper, orphaned when the refused SuperNode exited, names it by pid
        for pid in descendants([nodes["rogue"].pid]):
            os.kill(pid, signal.SIGTERM)
        # the impostor's registered key does not buy it site-a's name
        [refused] = results["rejected"]
        assert refused["node_id"] == node_ids["impostor"] and refused["kind"] == "identity"
        assert "impersonation" in refused["reason"]
        assert [r["round"] for r in results["rounds"]] == [0, 1]
        for site in ("site-a", "site-b"):
            client = results["clients"][site]
            assert 0.0 <= client["image_auroc"] <= 1.0
            assert client["pixel_auroc"] is not None
            assert client["bytes_up"] > 0 and client["bytes_down"] > 0
            assert Path(client["model_file"]).is_file()  # exported on the site's machine
            # each site kept its state in its own work dir
            assert (tmp_path / "work" / site / site).is_dir()
        assert (out / "global_memory.pt").is_file()
        assert (out / "checkpoints" / "round_001.pt").is_file()
    finally:
        helpers = descendants([s.process.pid for s in group.started])
        group.stop_all()
        print(group.logs(tail=15))  # shown by pytest only when the test fails
    assert all(s.process.poll() is not None for s in group.started)
    assert helpers and not descendants([s.process.pid for s in group.started])
    assert not [pid for pid in helpers if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"]

    # The attacks changed nothing: the same two sites federated on Flower's simulation engine,
    # with no impostor and no rogue node, reach the same detection.
    clean = run_federation(clean_spec, tmp_path / "clean", num_cpus=2, cpus_per_client=1.0)
    assert clean["status"] == "completed" and clean["rejected"] == []
    for site in SITES:
        attacked, alone = results["clients"][site], clean["clients"][site]
        print(site, attacked["image_auroc"], alone["image_auroc"])
        for key in ("image_auroc", "pixel_auroc"):
            assert attacked[key] == pytest.approx(alone[key], abs=1e-3), (site, key)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
