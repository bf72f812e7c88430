"""Where the anomaly maps of tiled normal images peak, from normal images alone.

The training normals of a set (MVTec layout) are sorted by name and split in two: a tiled
detector (`tile = "auto"`, the other settings default) is fitted on the even half and scores
the odd half. Printed: how many of those held-out normals have their map's maximum within
`--band` pixels of the image edge, and the share of the image that band covers. No defect is
looked at, so a site can run it on its own normals before choosing how to read an image score.

    .venv/bin/python benchmarks/tile_border.py --data ../shared/data/kolektorsdd
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from feddymem.config import DetectorConfig
from feddymem.data import scan
from feddymem.detect.detector import PatchCoreDetector
from feddymem.detect.tiling import edge_peaks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a set in MVTec layout")
    parser.add_argument("--band", type=int, default=32, help="edge band in pixels")
    parser.add_argument(
        "--tile-pad", type=int, default=None, help="DetectorConfig.tile_pad (None: the rule)"
    )
    args = parser.parse_args(argv)
    if not (args.data / "train" / "good").is_dir():
        print(f"error: --data {args.data}: no train/good folder", file=sys.stderr)
        return 2
    train = sorted(scan(args.data).train, key=lambda s: str(s.path))
    fit, held = train[::2], train[1::2]
    detector = PatchCoreDetector(DetectorConfig(tile="auto", tile_pad=args.tile_pad)).fit(fit)
    maps = detector.score_samples(held, keep_maps=True).anomaly_maps
    assert maps is not None
    k, n, area = edge_peaks(maps, args.band)
    at_edge = k / n
    print(
        json.dumps(
            {
                "data": str(args.data),
                "held_out_normals": len(held),
                "map_hw": list(maps.shape[1:]),
                "tiled": detector.tiling_ is not None,
                "tile_pad_px": None if detector.tiling_ is None else detector.tiling_.pad,
                "band_px": args.band,
                "peaks_in_band": round(at_edge, 3),
                "band_area": round(area, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
