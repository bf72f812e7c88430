"""The real `feddymem serve` process: each endpoint, each bad request, the token, the refusal
to listen beyond loopback unprotected, and a hot swap under load with no failed request."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from tests.serve.servekit import REPO, Models, Server, huge_png_header, png_of

from feddymem.detect.modelfile import write_state
from feddymem.detect.overlay import _legend_layout
from feddymem.detect.registry import load_detector


def _in_process_score(model: Path, image: Path) -> float:
    """The score `predict` gives the same image in this process."""
    from feddymem.data import Sample

    det = load_detector(model)
    batch = next(iter(det.batches([Sample(path=image, label=0, defect="good")])))
    return float(det.predict(batch.images).image_scores[0])


def test_endpoints(watched_server: tuple[Server, Path, Path], models: Models) -> None:
    server, _, _ = watched_server
    image = sorted((models.data / "test" / "spot").glob("*.png"))[0]
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "alive"}
        ready = c.get("/readyz").json()
        info = c.get("/v1/model").json()
        assert ready["model_version"] == info["model_version"]
        assert info["kind"] == "patchcore" and info["backbone"] == "efficientnet_lite0"
        assert info["image_hw"] == [64, 64] and info["memory_items"] > 0
        assert info["source"]["source"] == "fit" and info["last_error"] is None

        raw = c.post("/v1/score", content=image.read_bytes()).json()
        multi = c.post(
            "/v1/score", params={"heatmap": "png"}, files={"file": (image.name, image.read_bytes())}
        ).json()
        expected = _in_process_score(models.a, image)
        for body in (raw, multi):
            assert body["score"] == pytest.approx(expected, rel=1e-4)
            assert body["threshold"] == pytest.approx(info["threshold"])
            assert body["decision"] == ("anomalous" if expected > info["threshold"] else "normal")
            assert body["model_version"] == info["model_version"]
            assert body["server_ms"] > 0
        assert "overlay_png" not in raw and multi["name"] == image.name
        overlay = Image.open(io.BytesIO(base64.b64decode(multi["overlay_png"])))
        # predict's picture: the image at its own size, the legend band below it
        width, height = Image.open(image).size
        canvas_w, legend_h, _ = _legend_layout(width)
        assert overlay.size == (canvas_w, height + legend_h) and overlay.mode == "RGB"

        feed = c.get("/v1/feed").json()
        assert {e["source"] for e in feed["entries"]} >= {"http"}
        assert feed["entries"][0]["thumb"].startswith("data:image/jpeg;base64,")
        metrics = c.get("/metrics").text
        assert 'feddymem_requests_total{endpoint="/v1/score",status="200"}' in metrics
        assert "feddymem_score_seconds_bucket" in metrics
        assert f'feddymem_model_info{{version="{info["model_version"]}"}} 1.0' in metrics
        assert "feddymem_decisions_total" in metrics
        page = c.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text
        assert c.get("/static/app.js").status_code == 200


def test_watch_inside_serve(watched_server: tuple[Server, Path, Path], models: Models) -> None:
    server, watch_in, watch_out = watched_server
    src = sorted((models.data / "test" / "good").glob("*.png"))[0]
    tmp = watch_in / ".incoming.png.part"
    tmp.write_bytes(src.read_bytes())
    tmp.rename(watch_in / "line-0001.png")
    deadline = time.monotonic() + 60
    with server.client() as c:
        while time.monotonic() < deadline:
            watched = [e for e in c.get("/v1/feed").json()["entries"] if e["source"] == "watch"]
            if watched:
                break
            time.sleep(0.2)
    assert [e["name"] for e in watched] == ["line-0001.png"]
    rows = (watch_out / "results.jsonl").read_text().splitlines()
    assert len(rows) == 1 and '"line-0001.png"' in rows[0]
    assert (watch_out / "line-0001_overlay.png").is_file()


def test_bad_requests_and_token(models: Models, serve_process) -> None:  # type: ignore[no-untyped-def]
    token = "t0k3n-for-the-test-only"
    server = serve_process(
        models.a, "--token", token, "--max-bytes", "30000", "--max-pixels", "20000"
    )
    good = sorted((models.data / "test" / "good").glob("*.png"))[0].read_bytes()
    bomb_header = huge_png_header(50000, 50000)
    bad = {
        "not an image": (b"this is not an image" * 10, 415),
        "truncated": (good[: len(good) // 2], 400),
        "empty": (b"", 400),
        "over the byte cap": (os.urandom(40000), 413),
        "over the pixel cap": (png_of(200, 200), 413),
        "header over the pixel cap": (bomb_header, 413),
    }
    auth = {"Authorization": f"Bearer {token}"}
    with server.client() as c:
        assert c.post("/v1/score", content=good).status_code == 401
        assert c.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/healthz").status_code == 200  # probes stay open
        for what, (body, status) in bad.items():
            r = c.post("/v1/score", content=body, headers=auth)
            assert r.status_code == status, what
            assert r.json()["error"], what
        r = c.post("/v1/score", files={"file": ("big.bin", os.urandom(40000))}, headers=auth)
        assert r.status_code == 413
        r = c.post("/v1/score", params={"heatmap": "jpeg"}, content=good, headers=auth)
        assert r.status_code == 400
        ok = c.post("/v1/score", content=good, headers=auth)
        assert ok.status_code == 200 and ok.json()["decision"] in {"normal", "anomalous"}
    assert server.process.poll() is None


def test_refuses_non_loopback_without_protection(models: Models) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    env.pop("FEDDYMEM_TOKEN", None)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "feddymem.cli",
            "serve",
            "--model",
            str(models.a),
            "--host",
            "0.0.0.0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: --host 0.0.0.0 is not a loopback address")
    assert "Traceback" not in out.stderr


def test_hot_swap_under_load(models: Models, serve_process, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "site" / "model.pt"
    model.parent.mkdir()
    model.write_bytes(models.a.read_bytes())
    server = serve_process(model)
    image = sorted((models.data / "test" / "spot").glob("*.png"))[0].read_bytes()
    with server.client() as c:
        version_a = c.get("/v1/model").json()["model_version"]
    results: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def client() -> None:
        with server.client() as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/score", content=image)
                    results.append((r.status_code, r.json().get("model_version")))
                except httpx.HTTPError as err:
                    results.append((-1, repr(err)))

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        while len(results) < 10:
            time.sleep(0.05)
        write_state(load_state(models.b), model)  # temporary file, then rename
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(v != version_a for _, v in results[-6:]):
            time.sleep(0.1)
        n_after = len(results)
        while len(results) < n_after + 10:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join()
    statuses = {s for s, _ in results}
    versions = [v for _, v in results]
    assert statuses == {200}, [r for r in results if r[0] != 200][:3]
    assert versions[0] == version_a and versions[-1] != version_a
    assert set(versions) == {version_a, versions[-1]}
    # once swapped, never back
    first_b = versions.index(versions[-1])
    assert version_a not in versions[first_b + 6 :]  # at most one batch per client was in flight

    with server.client() as c:
        info = c.get("/v1/model").json()
        assert info["model_version"] == versions[-1] and info["source"]["round"] == 2
        # a file that does not load leaves the new model serving, reported by /v1/model
        broken = model.parent / ".broken.tmp"
        broken.write_bytes(b"not a model file")
        broken.replace(model)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and c.get("/v1/model").json()["last_error"] is None:
            time.sleep(0.2)
        info = c.get("/v1/model").json()
        assert (
            info["last_error"] is not None
            and "not a feddymem model file" in info["last_error"]["error"]
        )
        assert info["model_version"] == versions[-1]
        r = c.post("/v1/score", content=image)
        assert r.status_code == 200 and r.json()["model_version"] == versions[-1]
        assert 'feddymem_model_swaps_total{outcome="failed"} 1.0' in c.get("/metrics").text
    assert "new model file not loaded" in server.log.read_text()


def load_state(path: Path) -> dict:  # type: ignore[type-arg]
    from feddymem.detect.modelfile import read_state

    return read_state(path)


def test_serves_a_padim_model_as_fit_writes_it_by_default(
    models: Models,
    serve_process,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    from feddymem.config import FeatureConfig
    from feddymem.data import scan
    from feddymem.detect.gaussian import GaussianDetector, central_config

    cfg = central_config(FeatureConfig(image_size=64, batch_size=8))
    det = GaussianDetector(cfg).fit(scan(models.data).train)
    model = det.save(tmp_path / "padim.pt", provenance={"source": "fit"})
    image = sorted((models.data / "test" / "spot").glob("*.png"))[0]
    server = serve_process(model)
    with server.client() as c:
        info = c.get("/v1/model").json()
        assert info["kind"] == "gaussian" and info["memory_items"] is None
        assert info["image_hw"] == [64, 64]
        body = c.post(
            "/v1/score", params={"heatmap": "png"}, files={"file": (image.name, image.read_bytes())}
        ).json()
    expected = _in_process_score(model, image)
    assert body["score"] == pytest.approx(expected, rel=1e-4)
    assert body["threshold"] == pytest.approx(info["threshold"])
    assert body["decision"] == ("anomalous" if expected > info["threshold"] else "normal")
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size[0] >= Image.open(image).size[0]
