"""fed-padim on Flower messages: the sites' moments summed by the server give the pooled PaDiM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.conftest import make_texture_tree
from tests.federation.test_baselines import InProcessGrid, task_identity

from feddymem.detect.gaussian import GaussianDetector, PatchMoments
from feddymem.detect.registry import load_detector
from feddymem.federation.client_data import load_client_data
from feddymem.federation.fedpadim.client_app import build_fedpadim_client_app
from feddymem.federation.fedpadim.server_app import gaussian_config, serve_fed_padim
from feddymem.federation.runconfig import SPEC, WORK_DIR
from feddymem.federation.spec import SpecError, load_spec

__all__ = ["task_identity"]  # the autouse fixture Flower's message stamping needs

NAMES = ("alpha", "beta", "gamma")


@pytest.fixture
def spec(tmp_path: Path) -> Path:
    lines = ["[federation]", 'name = "padim-test"', "rounds = 1", "min_clients = 2", "seed = 3"]
    lines += ["", "[model]", "image_size = 64", "batch_size = 8", ""]
    for i, (name, texture) in enumerate(zip(NAMES, ("brick", "gravel", "grass"), strict=True)):
        root = make_texture_tree(
            tmp_path / name, n_train=6, n_good=3, n_bad=3, seed=i + 1, texture=texture
        )
        lines += ["[[clients]]", f'name = "{name}"', f'data = ["{root}"]', ""]
    path = tmp_path / "spec.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.mark.slow
def test_fed_padim_model_is_the_pooled_padim(spec: Path, tmp_path: Path) -> None:
    app = build_fedpadim_client_app(defaults={SPEC: str(spec), WORK_DIR: str(tmp_path / "work")})
    fed_spec = load_spec(spec)
    results = serve_fed_padim(InProcessGrid(app, 3), fed_spec, tmp_path / "out")

    assert results["status"] == "completed" and results["rejected"] == []
    assert results["evaluated_clients"] == list(NAMES)
    cfg = gaussian_config(fed_spec)
    parts = [
        GaussianDetector(cfg).local_moments(list(load_client_data(fed_spec, i).train))
        for i in range(3)
    ]
    pooled = PatchMoments.pooled([p.moments for p in parts])
    assert results["pooled_images"] == pooled.count == sum(p.moments.count for p in parts)
    reference = GaussianDetector(cfg).fit_moments(parts[0], pooled)
    assert pooled.total is not None
    p, d = pooled.total.shape
    for name in NAMES:
        client = results["clients"][name]
        assert isinstance(client["image_auroc"], float)
        # the site's own threshold, not cross-fitted (fed-padim's default)
        assert client["calibration_folds"] == 0 and client["calibration_normals"] >= 1
        low, high = client["false_alarm_rate_ci95_low"], client["false_alarm_rate_ci95_high"]
        assert low <= client["false_alarm_rate_at_threshold"] <= high
        (up,) = (r["up"] for r in results["bytes"]["per_client_per_round"][name].values())
        assert up > p * d * d * 8  # the float64 sum of outer products dominates the upload
        model = load_detector(Path(client["model_file"]))
        assert isinstance(model, GaussianDetector) and model.mean_ is not None
        assert reference.mean_ is not None and reference.precision_ is not None
        torch.testing.assert_close(model.mean_, reference.mean_, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.precision_, reference.precision_, rtol=1e-4, atol=1e-4)


def test_spec_carries_the_moment_settings_to_every_site(spec: Path) -> None:
    """`[model] upload_noise` and `calibration` become the Gaussian settings the server orders
    every site to use (fed-padim's sites hold out unless the spec asks for the cross-fit); a
    calibration that is neither is refused at load."""
    text = spec.read_text(encoding="utf-8")
    other = spec.with_name("other.toml")
    other.write_text(
        text.replace(
            "[model]\n", '[model]\nupload_noise = 1.5\ncalibration = "crossfit"\ntile = "auto"\n'
        ),
        "utf-8",
    )
    cfg = gaussian_config(load_spec(other))
    # a FedDyMem site's tiling does not reach fed-padim's moments: one grid of whole images
    assert (cfg.moment_noise, cfg.calibration, cfg.tile) == (1.5, "crossfit", "off")
    plain = gaussian_config(load_spec(spec))
    assert (plain.moment_noise, plain.calibration) == (0.0, "holdout")
    other.write_text(text.replace("[model]\n", '[model]\ncalibration = "both"\n'), "utf-8")
    with pytest.raises(SpecError, match="calibration"):
        load_spec(other)
