"""Copy a comparison table (`feddymem bench ... --report-only` writes <out>/table.md) into the
README, between its `<!-- bench-table -->` and `<!-- /bench-table -->` markers.

    .venv/bin/python benchmarks/embed_table.py --table runs/bench-full/table.md [--readme README.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-table -->", "<!-- /bench-table -->"


def embed(readme: str, table: str) -> str:
    """`readme` with the text between the markers replaced by `table`."""
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise SystemExit(f"the README must hold {START} and {END} exactly once each")
    head, rest = readme.split(START)
    _, tail = rest.split(END)
    # The README's section has its own heading; paths are shown relative to the repository.
    lines = [ln for ln in table.strip().splitlines() if not ln.startswith("# ")]
    body = "\n".join(lines).strip().replace(f"{REPO}/", "")
    return f"{head}{START}\n\n{body}\n{END}{tail}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, required=True, help="table.md from feddymem bench")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args()
    args.readme.write_text(embed(args.readme.read_text(), args.table.read_text()))
    print(f"{args.readme}: table from {args.table}")


if __name__ == "__main__":
    main()
