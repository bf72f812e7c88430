"""Every bad input of the `feddymem` command: one `error: ...` line naming the file or option,
exit code 2, no traceback (unless --debug), nothing half-written or overwritten by accident."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from feddymem.cli import main
from feddymem.config import DetectorConfig
from feddymem.data import scan
from feddymem.detect.detector import PatchCoreDetector


def _load_make_texture_tree():  # type: ignore[no-untyped-def]
    """The tests' root conftest helper (another conftest may own the module name)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "feddymem_tests_root_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_texture_tree


make_texture_tree = _load_make_texture_tree()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_texture_tree(tmp_path_factory.mktemp("cli") / "brick", n_train=8, n_good=3, n_bad=3)


@pytest.fixture(scope="module")
def model(tree: Path) -> Path:
    det = PatchCoreDetector(DetectorConfig(image_size=64, coreset_ratio=0.1)).fit(scan(tree).train)
    return det.save(tree.parent / "m.pt")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and the `error:` lines of one command run in-process."""
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, "\n".join(line for line in err.splitlines() if line.startswith("error:"))


def assert_user_error(code: int, message: str, *needles: str) -> None:
    assert code == 2
    assert message.count("\n") == 0 and message.startswith("error: "), message
    for needle in needles:
        assert needle in message, (needle, message)


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--seed", "-1", "--seed must be >= 0"),
        ("--blur-sigma", "nan", "--blur-sigma must be a finite number"),
        ("--coreset-ratio", "0", "--coreset-ratio must be in (0, 1]"),
        ("--image-size", "8", "--image-size must be in [32, 2048]"),
    ],
)
def test_out_of_range_options_name_the_option(
    tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    named: str,
) -> None:
    out = tmp_path / "m.pt"
    argv = ["fit", "--data", str(tree), "--out", str(out), "--detector", "patchcore"]
    code, message = run([*argv, option, value], capsys)
    assert_user_error(code, message, named)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_size_correction_with_two_folds_names_both_options(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    args = ["--detector", "patchcore", "--calibration-folds", "2", "--crossfit-correction", "size"]
    code, message = run(["fit", "--data", str(tree), "--out", str(out), *args], capsys)
    assert_user_error(code, message, "--crossfit-correction 'size' needs --calibration-folds >= 3")
    assert not out.exists()


def test_neighbors_above_the_bank_size(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.pt"
    argv = ["fit", "--data", str(tree), "--out", str(out), "--image-size", "64"]
    code, message = run([*argv, "--detector", "patchcore", "--neighbors", "100000"], capsys)
    assert_user_error(code, message, "--neighbors = 100000 exceeds the memory bank's")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_or_occupied_out_is_refused_before_the_fit(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import feddymem.detect.detector as detector

    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("the fit started before --out was checked")

    monkeypatch.setattr(detector.PatchCoreDetector, "fit", no_fit)
    folder = tmp_path / "occupied"
    folder.mkdir()
    code, message = run(
        ["fit", "--data", str(tree), "--out", str(folder), "--detector", "patchcore"], capsys
    )
    assert_user_error(code, message, f"--out {folder} is a folder")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, message = run(
        ["fit", "--data", str(tree), "--out", str(a_file / "m.pt"), "--detector", "patchcore"],
        capsys,
    )
    assert_user_error(code, message, f"{a_file} is not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "occupied"]  # no <out>.tmp
    assert list(folder.iterdir()) == []


def test_a_file_that_is_not_a_model(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(2000))
    code, message = run(
        [
            "predict",
            "--model",
            str(junk),
            "--out",
            str(tmp_path / "o"),
            str(tree / "test" / "good"),
        ],
        capsys,
    )
    assert_user_error(code, message)
    assert message == f"error: {junk} is not a feddymem model file"
    code, message = run(
        ["evaluate", "--model", str(tmp_path / "none.pt"), "--data", str(tree)], capsys
    )
    assert_user_error(code, message, "none.pt")


def test_evaluate_with_one_class_and_a_wrong_size_mask(
    tree: Path, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    one = tmp_path / "one"
    shutil.copytree(tree / "train", one / "train")
    shutil.copytree(tree / "test" / "good", one / "test" / "good")
    code, message = run(["evaluate", "--model", str(model), "--data", str(one)], capsys)
    assert_user_error(code, message, f"{one}: every test image is normal")

    bad = tmp_path / "bad"
    shutil.copytree(tree, bad)
    mask = sorted((bad / "ground_truth" / "spot").iterdir())[0]
    Image.open(mask).resize((40, 30)).save(mask)
    code, message = run(["evaluate", "--model", str(model), "--data", str(bad)], capsys)
    assert_user_error(code, message, str(mask), "mask size")


def test_predict_missing_folder_and_nothing_scored(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    code, message = run(
        ["predict", "--model", str(model), "--out", str(out), str(tmp_path / "no")], capsys
    )
    assert_user_error(code, message, f"{tmp_path / 'no'}: no such file or folder")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    code, message = run(["predict", "--model", str(model), "--out", str(out), str(broken)], capsys)
    assert_user_error(code, message, "none of the 1 input(s) could be scored")
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert rows[0]["path"] == str(broken) and rows[0]["overlay"].startswith("skipped:")
    occupied = tmp_path / "occupied"
    occupied.write_text("x")
    code, message = run(
        ["predict", "--model", str(model), "--out", str(occupied), str(broken)], capsys
    )
    assert_user_error(code, message, f"--out {occupied} exists and is not a folder")


def test_same_file_name_in_two_folders_keeps_both_overlays(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_texture_tree(tmp_path / "mv", n_train=1, n_good=2, n_bad=2)
    monkeypatch.chdir(tmp_path / "mv")
    out = tmp_path / "pred"
    code = main(["predict", "--model", str(model), "--out", str(out), "test/spot", "test/good"])
    assert code == 0
    spot, good = (
        out / "test" / "spot" / "000_overlay.png",
        out / "test" / "good" / "000_overlay.png",
    )
    assert spot.is_file() and good.is_file()
    assert not np.array_equal(np.asarray(Image.open(spot)), np.asarray(Image.open(good)))
    rows = {r["path"]: r["overlay"] for r in csv.DictReader((out / "scores.csv").open())}
    assert rows["test/spot/000.png"] == "test/spot/000_overlay.png"
    # stable: the same input gets the same name whatever else is given with it
    code = main(["predict", "--model", str(model), "--out", str(out), "test/good/000.png"])
    rows = {r["path"]: r["overlay"] for r in csv.DictReader((out / "scores.csv").open())}
    assert code == 0 and rows == {"test/good/000.png": "test/good/000_overlay.png"}


def test_non_utf8_name_and_scores_csv_kept_on_failure(
    model: Path, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.name != "posix":
        pytest.skip("byte file names are a POSIX matter")
    folder = tmp_path / "in"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1 name, not UTF-8
    src = sorted((tree / "test" / "spot").iterdir())[0]
    with open(raw, "wb") as fh:
        fh.write(src.read_bytes())
    out = tmp_path / "o"
    assert main(["predict", "--model", str(model), "--out", str(out), str(folder)]) == 0
    data = (out / "scores.csv").read_bytes()
    assert b"caf\xe9.png" in data  # the file's own bytes
    before = (out / "scores.csv").read_bytes()

    import feddymem.detect.predict as predict

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", str(out / "x.png"))

    monkeypatch.setattr(predict, "overlay_with_legend", broken)
    assert main(["predict", "--model", str(model), "--out", str(out), str(folder)]) == 2
    assert (out / "scores.csv").read_bytes() == before  # never truncated
    assert not [p for p in out.rglob("*.tmp")]


def test_argument_errors_are_one_line_and_debug_shows_the_traceback(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["fit", "--out", str(tmp_path / "m.pt")])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and err.count("\n") == 1 and "--data" in err
    with pytest.raises(ValueError, match="no such file or folder"):
        main(["--debug", "predict", "--model", str(model), "--out", str(tmp_path), "nope"])


def _spec(tmp_path: Path, tree: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text.replace("DATA", str(tree)))
    return path


GOOD_SPEC = """
[federation]
name = "t"
rounds = 1
min_clients = 2

[[clients]]
name = "a"
data = ["DATA"]

[[clients]]
name = "b"
data = ["DATA"]
"""


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.replace("rounds = 1", "rounds = 1 ="), "not valid TOML"),
        (lambda s: s.replace("rounds = 1", "rounds = 1\nroundz = 2"), "unknown key(s) ['roundz']"),
        (lambda s: s.replace("min_clients = 2", "min_clients = 3"), "min_clients = 3 exceeds"),
        (lambda s: s.replace("rounds = 1", "rounds = -1"), "'rounds' must be >= 0, got -1"),
    ],
)
def test_spec_errors(
    tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: object, named: str
) -> None:
    spec = _spec(tmp_path, tree, edit(GOOD_SPEC))  # type: ignore[operator]
    code, message = run(["federate", "--config", str(spec), "--out", str(tmp_path / "run")], capsys)
    assert_user_error(code, message, str(spec), named)


def test_a_tiny_image_among_the_held_out_normals_leaves_the_threshold(
    model: Path, tree: Path, tmp_path: Path
) -> None:
    from feddymem.data import Sample
    from feddymem.detect.registry import load_detector

    det = load_detector(model)
    normals = [s for s in scan(tree).test if s.label == 0]
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((1, 1, 3), 255, np.uint8)).save(tiny)
    alone = det.calibrate(normals, quantile=0.99)
    with_tiny = det.calibrate([*normals, Sample(path=tiny, label=0, defect="good")], quantile=0.99)
    assert with_tiny == alone  # the 1x1 image is skipped (named in the log), not scored
