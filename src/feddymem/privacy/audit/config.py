"""Audit configuration: the TOML file's sections as validated, typed dataclasses."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from feddymem.config import ConfigError, FedDyMemConfig, from_dict, to_dict

Group = Literal["a", "b", "c", "d"]
_FEATURE_KEYS = frozenset({"backbone", "layers", "image_size", "keep_aspect", "seed"})
_SECTIONS = frozenset({"audit", "data", "attack", "model", "settings", "fed_padim"})


@dataclass(frozen=True, kw_only=True)
class AuditRun:
    """`[audit]`: label, seed, R rounds after round 0, delta of the reported (epsilon, delta)."""

    name: str = "audit"
    seed: int = 0
    rounds: int = 2
    delta: float = 1e-5

    def __post_init__(self) -> None:
        _need(self.rounds >= 0, f"rounds must be >= 0, got {self.rounds}")
        _need(0.0 < self.delta < 1.0, f"delta must be in (0, 1), got {self.delta}")


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """`[data]`: where the victim's and the attacker's images are and how many to take."""

    victim: Path
    public: Path
    victim_images: int = 100
    public_images: int = 200
    reference_images: int = 0
    test_images: int = 200

    def __post_init__(self) -> None:
        _need(self.victim_images >= 2, f"victim_images must be >= 2, got {self.victim_images}")
        _need(self.public_images >= 2, f"public_images must be >= 2, got {self.public_images}")
        _need(self.reference_images >= 0, "reference_images must be >= 0")
        _need(self.test_images >= 0, f"test_images must be >= 0, got {self.test_images}")


@dataclass(frozen=True, kw_only=True)
class AttackSpec:
    """`[attack]`: the inversion decoder and how many items are scored and drawn."""

    patch_size: int = 16
    hidden: int = 256
    steps: int = 1000
    batch_size: int = 256
    lr: float = 2e-3
    oracle_steps: int = 300
    items: int = 384
    grid_items: int = 6
    whole_images: int = 16
    membership_positions: int = 64
    shadows: int = 2

    def __post_init__(self) -> None:
        _need(
            self.patch_size >= 8 and self.patch_size % 2 == 0,
            f"patch_size must be even and >= 8, got {self.patch_size}",
        )
        _need(self.hidden >= 8, f"hidden must be >= 8, got {self.hidden}")
        _need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _need(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _need(self.oracle_steps >= 0, f"oracle_steps must be >= 0, got {self.oracle_steps}")
        _need(self.items >= 1, f"items must be >= 1, got {self.items}")
        _need(self.grid_items >= 1, f"grid_items must be >= 1, got {self.grid_items}")
        _need(self.whole_images >= 1, f"whole_images must be >= 1, got {self.whole_images}")
        _need(
            self.membership_positions >= 1,
            f"membership_positions must be >= 1, got {self.membership_positions}",
        )
        _need(self.shadows >= 0, f"shadows must be >= 0, got {self.shadows}")


@dataclass(frozen=True, kw_only=True)
class FedPadimSpec:
    """`[fed_padim]` (optional): audit fed-padim's upload too, a Gaussian per grid position
    with PaDiM's shrinkage `eps` (Sigma + eps * I), on the [model]'s features; one row per
    `noise` level (`GaussianConfig.moment_noise`: noise on the patch vectors before the
    moments are summed, 0: the exact moments)."""

    eps: float = 0.01
    noise: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        _need(self.eps > 0.0, f"eps must be > 0, got {self.eps}")
        _need(
            len(self.noise) >= 1
            and all(isinstance(v, int | float) and 0 <= v < 100 for v in self.noise)
            and len(set(self.noise)) == len(self.noise),
            f"noise must be distinct numbers in [0, 100), got {self.noise}",
        )


@dataclass(frozen=True, kw_only=True)
class SettingSpec:
    """One `[[settings]]` entry: the upload to audit. `clip_quantile` (when set) replaces
    `model.dp_clip_norm` by that quantile of the public features' norms at run time."""

    name: str
    group: Group
    model: FedDyMemConfig
    clip_quantile: float | None = None


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    """The whole audit: `[audit]`, `[data]`, `[attack]`, the settings (models resolved)."""

    run: AuditRun
    data: DataSpec
    attack: AttackSpec
    model: dict[str, Any]
    settings: tuple[SettingSpec, ...]
    source: Path | None = None
    fed_padim: FedPadimSpec | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view (paths as strings, each setting's full model config)."""
        return {
            "audit": dataclasses.asdict(self.run),
            "data": {k: str(v) if isinstance(v, Path) else v for k, v in _fields(self.data)},
            "attack": dataclasses.asdict(self.attack),
            "model": dict(self.model),
            "settings": [
                {
                    "name": s.name,
                    "group": s.group,
                    "clip_quantile": s.clip_quantile,
                    "model": to_dict(s.model),
                }
                for s in self.settings
            ],
            "source": None if self.source is None else str(self.source),
            "fed_padim": None if self.fed_padim is None else to_dict(self.fed_padim),
        }


def _fields(obj: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"[{key}] must be a table, got {type(value).__name__}")
    return dict(value)


def parse_audit_config(raw: dict[str, Any], *, base: Path) -> AuditConfig:
    """Validate a parsed TOML tree; relative data paths are taken from `base`.

    Every error is a ConfigError naming the section and the key.
    """
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise ConfigError(f"audit config: unknown section(s) {unknown}; known: {sorted(_SECTIONS)}")
    run = from_dict(AuditRun, _table(raw, "audit"), where="[audit]")
    data_raw = _table(raw, "data")
    for key in ("victim", "public"):
        if key not in data_raw:
            raise ConfigError(f"[data] {key}: missing (a folder in MVTec layout)")
        if not isinstance(data_raw[key], str):
            raise ConfigError(f"[data] {key}: must be a path string")
        data_raw[key] = (base / data_raw[key]).resolve()
    data = from_dict(DataSpec, data_raw, where="[data]")
    attack = from_dict(AttackSpec, _table(raw, "attack"), where="[attack]")
    model = _table(raw, "model")
    model.setdefault("seed", run.seed)
    from_dict(FedDyMemConfig, dict(model), where="[model]")  # validate the shared part once
    entries = raw.get("settings")
    if not isinstance(entries, list) or not entries:
        raise ConfigError("[[settings]]: at least one setting is needed")
    settings: list[SettingSpec] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"[[settings]] #{i}: must be a table")
        entry = dict(entry)
        name = entry.pop("name", None)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ConfigError(f"[[settings]] #{i} name: letters, digits, '_', '.', '-' needed")
        where = f"[[settings]] {name}"
        group = entry.pop("group", None)
        if group not in ("a", "b", "c", "d"):
            raise ConfigError(f"{where} group: must be 'a', 'b', 'c' or 'd', got {group!r}")
        quantile = entry.pop("clip_quantile", None)
        if quantile is not None:
            if not isinstance(quantile, int | float) or not 0.0 < float(quantile) <= 1.0:
                raise ConfigError(f"{where} clip_quantile: must be in (0, 1], got {quantile!r}")
            if "dp_clip_norm" in entry:
                raise ConfigError(f"{where} clip_quantile: give it or dp_clip_norm, not both")
        fixed = sorted(_FEATURE_KEYS & set(entry))
        if fixed:
            raise ConfigError(
                f"{where} {fixed[0]}: set it in [model] (one decoder and one data split serve "
                "every setting)"
            )
        values = {**model, **entry}
        if quantile is not None:
            values["dp_clip_norm"] = 1.0  # placeholder, replaced at run time
        settings.append(
            SettingSpec(
                name=name,
                group=group,
                model=from_dict(FedDyMemConfig, values, where=where),
                clip_quantile=None if quantile is None else float(quantile),
            )
        )
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise ConfigError(f"[[settings]] name: duplicated in {names}")
    fed_padim = (
        from_dict(FedPadimSpec, _table(raw, "fed_padim"), where="[fed_padim]")
        if "fed_padim" in raw
        else None
    )
    return AuditConfig(
        run=run,
        data=data,
        attack=attack,
        model=model,
        settings=tuple(settings),
        source=None,
        fed_padim=fed_padim,
    )


def load_audit_config(path: Path) -> AuditConfig:
    """Read and validate an audit config file (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"audit config not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    try:
        config = parse_audit_config(raw, base=path.resolve().parent)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return dataclasses.replace(config, source=path.resolve())
