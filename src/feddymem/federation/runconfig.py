"""Where a ServerApp / ClientApp finds its files: Flower's run config and node config.

Run config (``[tool.flwr.app.config]`` of the app, ``flwr run --run-config``, or the defaults a
simulation builds its apps with):

``spec``      path of the federation spec TOML (server; simulated clients read their data there)
``out``       the server's output folder (checkpoints, results.json, global_memory.pt)
``work-dir``  where clients keep their state (a site's node config may override it)
``resume``    continue from the last checkpoint in ``out``
``feature-cache``  optional folder of cached patch features, shared by runs on the same files
              (default: ``<work-dir>/feature-cache``; a site's node config may override it)

Node config (``flower-supernode --node-config``) of a deployed site:

``name``      the site's client name, e.g. ``"site-a"``
``data``      comma-separated data roots (MVTec layout) on that machine
``public``    optional comma-separated roots of public normal images of the site's kind (the
              public vote's codebook, ``[model] public_vote``)
``work-dir``  the site's state folder

In simulation Flower sets ``partition-id`` instead: it indexes the spec's clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATA",
    "FEATURE_CACHE",
    "NAME",
    "OUT",
    "PARTITION_ID",
    "PUBLIC",
    "RESUME",
    "SPEC",
    "WORK_DIR",
    "RunConfigError",
    "ServerSettings",
    "SiteSettings",
    "server_settings",
    "site_settings",
]

SPEC = "spec"
OUT = "out"
WORK_DIR = "work-dir"
RESUME = "resume"
NAME = "name"
DATA = "data"
PUBLIC = "public"
PARTITION_ID = "partition-id"
FEATURE_CACHE = "feature-cache"

Value = bool | int | float | str


class RunConfigError(ValueError):
    """A run-config or node-config key the app needs is missing or malformed."""


@dataclass(frozen=True)
class ServerSettings:
    """What the ServerApp reads from the run config."""

    spec: Path
    out: Path
    resume: bool


@dataclass(frozen=True)
class SiteSettings:
    """How a ClientApp finds its data and its state folder.

    Deployed: `name` and `roots` from the node config. Simulated: `partition_id` indexes the
    clients of the spec at `spec`.
    """

    work_dir: Path
    name: str | None = None
    roots: tuple[Path, ...] = ()
    public: tuple[Path, ...] = ()
    partition_id: int | None = None
    spec: Path | None = None
    feature_cache: Path | None = None

    @property
    def features_dir(self) -> Path:
        """Folder of cached patch features (``feature-cache``, else ``<work-dir>/feature-cache``)."""
        return self.feature_cache or self.work_dir / "feature-cache"


def _merged(config: Mapping[str, Value], defaults: Mapping[str, Value]) -> dict[str, Value]:
    out = dict(defaults)
    for key, value in config.items():
        # An empty string in the app's pyproject means "not set here".
        if value != "":
            out[key] = value
    return out


def _path(values: Mapping[str, Value], key: str, where: str) -> Path:
    value = values.get(key, "")
    if not isinstance(value, str) or not value:
        raise RunConfigError(f"{where}: '{key}' must be set to a path (got {value!r})")
    return Path(value).expanduser()


def _roots(value: str) -> tuple[Path, ...]:
    return tuple(Path(p.strip()).expanduser().resolve() for p in value.split(",") if p.strip())


def server_settings(
    run_config: Mapping[str, Value], *, defaults: Mapping[str, Value]
) -> ServerSettings:
    """Resolve the server's settings; `defaults` come from whoever built the app."""
    values = _merged(run_config, defaults)
    resume = values.get(RESUME, False)
    if not isinstance(resume, bool):
        raise RunConfigError(f"run config: '{RESUME}' must be true or false, got {resume!r}")
    return ServerSettings(
        spec=_path(values, SPEC, "run config").resolve(),
        out=_path(values, OUT, "run config").resolve(),
        resume=resume,
    )


def site_settings(
    node_config: Mapping[str, Value],
    run_config: Mapping[str, Value],
    *,
    defaults: Mapping[str, Value],
) -> SiteSettings:
    """Resolve a client's settings: node config first, then run config, then `defaults`."""
    run_values = _merged(run_config, defaults)
    work = node_config.get(WORK_DIR) or run_values.get(WORK_DIR, "")
    if not isinstance(work, str) or not work:
        raise RunConfigError(
            f"'{WORK_DIR}' is not set: give it in the SuperNode's --node-config or the run config"
        )
    work_dir = Path(work).expanduser().resolve()
    cache_value = node_config.get(FEATURE_CACHE) or run_values.get(FEATURE_CACHE, "")
    if not isinstance(cache_value, str):
        raise RunConfigError(f"'{FEATURE_CACHE}' must be a path, got {cache_value!r}")
    cache = Path(cache_value).expanduser().resolve() if cache_value else None
    if DATA in node_config:
        data = node_config[DATA]
        if not isinstance(data, str) or not data.strip():
            raise RunConfigError(
                f"node config: '{DATA}' must be comma-separated paths, got {data!r}"
            )
        roots = _roots(data)
        public = node_config.get(PUBLIC, "")
        if not isinstance(public, str):
            raise RunConfigError(
                f"node config: '{PUBLIC}' must be comma-separated paths, got {public!r}"
            )
        name = node_config.get(NAME, "")
        if not isinstance(name, str) or not name:
            raise RunConfigError(f"node config: '{NAME}' must be set next to '{DATA}'")
        return SiteSettings(
            work_dir=work_dir,
            name=name,
            roots=roots,
            public=_roots(public),
            feature_cache=cache,
        )
    if PARTITION_ID in node_config:
        pid = node_config[PARTITION_ID]
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise RunConfigError(f"node config: '{PARTITION_ID}' must be an integer, got {pid!r}")
        return SiteSettings(
            work_dir=work_dir,
            partition_id=pid,
            spec=_path(run_values, SPEC, "run config").resolve(),
            feature_cache=cache,
        )
    raise RunConfigError(
        f"node config has neither '{DATA}' (a deployed site: --node-config 'name=\"...\" "
        f"data=\"/path/a,/path/b\"') nor '{PARTITION_ID}' (a simulated client)"
    )
