"""A seeded fuzz test of the `feddymem` command over image files and options: whatever it is
given, it exits 0 or 2, never with a traceback, and an exit 2 says one `error: ...` line.

Bounded in time (FUZZ_BUDGET_S, default 60 s) and in cases; the seed (FUZZ_SEED, default 0)
makes a failure reproducible.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from feddymem.cli import main
from feddymem.config import DetectorConfig
from feddymem.data import scan
from feddymem.detect.detector import PatchCoreDetector

SEED = int(os.environ.get("FUZZ_SEED", "0"))
BUDGET_S = float(os.environ.get("FUZZ_BUDGET_S", "60"))
MAX_CASES = 200

OPTION_VALUES: dict[str, list[str]] = {
    "--detector": ["padim", "patchcore", "patchcore", "gauss"],
    "--seed": ["-1", "0", "7", "x", "99999999999"],
    "--blur-sigma": ["nan", "inf", "-1", "0", "2"],
    "--neighbors": ["0", "1", "3", "100000", "-2"],
    "--image-size": ["0", "31", "32", "48", "100000"],
    "--coreset-ratio": ["0", "0.5", "1", "2", "nan"],
    "--batch-size": ["0", "1", "3"],
    "--threshold-quantile": ["0.2", "0.99", "nan", "1"],
    "--calibration": ["holdout", "crossfit", "neither"],
    "--calibration-folds": ["1", "2", "3"],
    "--crossfit-correction": ["none", "size", "sizes"],
    "--sampler": ["greedy", "random", "none"],
    "--knn-backend": ["torch", "faiss"],
}
FLAGS = ["--refit", "--squash", "--tap-balance"]


def _png_bytes(array: np.ndarray, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_file(rng: np.random.Generator, folder: Path, index: int) -> Path:
    """One image-like file of a random kind: good, odd, tiny, truncated or junk."""
    h, w = (int(v) for v in rng.integers(1, 120, size=2))
    rgb = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    kind = int(rng.integers(0, 11))
    name = f"f{index}_{kind}"
    if kind == 0:
        data, suffix = _png_bytes(rgb), ".png"
    elif kind == 1:
        data, suffix = _png_bytes(rgb, "JPEG"), ".jpg"
    elif kind == 2:
        data, suffix = _png_bytes(rgb[..., 0].astype(np.uint16) * 257), ".png"
    elif kind == 3:
        data, suffix = _png_bytes(np.dstack([rgb, rgb[..., :1]])), ".png"  # RGBA
    elif kind == 4:
        data, suffix = _png_bytes(rgb)[: int(rng.integers(8, 60))], ".png"  # truncated
    elif kind == 5:
        data, suffix = rng.bytes(int(rng.integers(0, 300))), ".png"  # junk or empty
    elif kind == 6:
        data, suffix = _png_bytes(rgb[:1, :1]), ".png"  # 1x1
    elif kind == 7:
        data, suffix = _png_bytes(rgb, "BMP"), ".bmp"
    elif kind == 8:
        path = folder / f"{name}.png"
        path.mkdir()  # a folder with an image's name
        return path
    elif kind == 9:
        data, suffix = _png_bytes(rgb), ".PNG"
    else:  # a name that is not UTF-8
        raw = os.fsencode(folder) + f"/{name}_\xe9".encode("latin-1") + b".png"
        with open(raw, "wb") as fh:
            fh.write(_png_bytes(rgb))
        return Path(os.fsdecode(raw))
    path = folder / f"{name}{suffix}"
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(SEED)
    tree = root / "tree"
    for folder in ("train/good", "test/good", "test/bad", "ground_truth/bad"):
        (tree / folder).mkdir(parents=True)
    for i in range(5):
        Image.fromarray(rng.integers(90, 110, (48, 48, 3), dtype=np.uint8)).save(
            tree / "train" / "good" / f"{i:03d}.png"
        )
    for i in range(2):
        Image.fromarray(rng.integers(90, 110, (48, 48, 3), dtype=np.uint8)).save(
            tree / "test" / "good" / f"{i:03d}.png"
        )
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            tree / "test" / "bad" / f"{i:03d}.png"
        )
        mask = np.zeros((48 if i else 40, 48), np.uint8)  # one mask of the wrong size
        Image.fromarray(mask).save(tree / "ground_truth" / "bad" / f"{i:03d}_mask.png")
    det = PatchCoreDetector(DetectorConfig(image_size=32, coreset_ratio=0.5)).fit(scan(tree).train)
    model = det.save(root / "m.pt")
    junk = root / "junk.pt"
    junk.write_bytes(rng.bytes(500))
    inputs = root / "inputs"
    inputs.mkdir()
    for i in range(24):
        make_file(rng, inputs, i)
    blocker = root / "blocker"
    blocker.write_text("a file where a folder is wanted")
    return {
        "root": root,
        "tree": tree,
        "model": model,
        "junk": junk,
        "inputs": inputs,
        "blocker": blocker,
    }


def random_argv(rng: np.random.Generator, world: dict[str, Path], case: int) -> list[str]:
    root = world["root"]
    pick = lambda seq: seq[int(rng.integers(0, len(seq)))]  # noqa: E731
    outs = [root / f"out{case}", world["blocker"], world["blocker"] / "x", root / "tree"]
    command = pick(["predict", "predict", "predict", "evaluate", "fit"])
    model = str(pick([world["model"], world["model"], world["junk"], root / "nope.pt"]))
    if command == "predict":
        files = sorted(world["inputs"].iterdir())
        chosen = [str(files[int(i)]) for i in rng.choice(len(files), size=int(rng.integers(1, 5)))]
        if rng.random() < 0.2:
            chosen.append(str(world["inputs"]))
        if rng.random() < 0.1:
            chosen.append(str(root / "missing"))
        return ["predict", "--model", model, "--out", str(pick(outs)), *chosen]
    if command == "evaluate":
        data = pick([world["tree"], world["inputs"], root / "missing"])
        return [
            "evaluate",
            "--model",
            model,
            "--data",
            str(data),
            *(["--json"] if rng.random() < 0.5 else []),
        ]
    out = pick([root / f"m{case}.pt", root / f"m{case}.pt", *outs])
    argv = [
        "fit",
        "--data",
        str(pick([world["tree"], world["tree"], world["inputs"]])),
        "--out",
        str(out),
    ]
    argv += ["--image-size", "32"]
    for option in rng.choice(list(OPTION_VALUES), size=int(rng.integers(0, 4)), replace=False):
        argv += [str(option), pick(OPTION_VALUES[str(option)])]
    for flag in FLAGS:
        if rng.random() < 0.15:
            argv.append(flag)
    return argv


@pytest.mark.slow
def test_fuzz_finds_no_traceback(
    world: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(SEED + 1)
    deadline = time.monotonic() + BUDGET_S
    seen: dict[int, int] = {}
    case = 0
    while case < MAX_CASES and time.monotonic() < deadline:
        argv = random_argv(rng, world, case)
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: an option it cannot parse
            code = int(exit_.code or 0)
        err = capsys.readouterr().err
        context = f"case {case} (FUZZ_SEED={SEED}): feddymem {' '.join(argv)}\n{err}"
        assert "Traceback" not in err, context
        assert code in (0, 2), context
        if code == 2:
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, context
        seen[code] = seen.get(code, 0) + 1
        case += 1
    with capsys.disabled():
        print(f"\nfuzz: {case} cases in {BUDGET_S:g} s (seed {SEED}), exit codes {seen}")
    assert case >= 5, f"only {case} cases ran in {BUDGET_S} s"
    assert seen.get(0) and seen.get(2), seen  # both outcomes were exercised
