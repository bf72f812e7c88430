"""One FedDyMem client: frozen features, memory generator G_k, metric loss, dynamic memory and
memory-reduce, with its state on disk so a fresh process continues where the last one stopped.

No Flower here: the federation's ClientApp unpacks a message and calls `fit_round` / `evaluate`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from feddymem.config import FedDyMemConfig
from feddymem.data import LoadReport, Sample, iter_batches, resolve_size
from feddymem.detect.base import ScoreResult
from feddymem.detect.dataset_scores import site_threshold_metrics
from feddymem.detect.detector import MemoryBankDetector
from feddymem.detect.features import PatchFeatureExtractor
from feddymem.detect.threshold import split_calibration
from feddymem.method.generator import MemoryGenerator, train_generator
from feddymem.method.losses import MetricLoss
from feddymem.method.reduce import ReducedMemory, reduce_memory
from feddymem.method.seeds import round_seed
from feddymem.metrics import DetectionMetrics
from feddymem.outputs import atomic_open

if TYPE_CHECKING:
    from feddymem.privacy.public_vote import PublicCodebook

log = logging.getLogger(__name__)

STATE_FILE = "client_state.pt"
FEATURES_FILE = "features.pt"
SCORES_FILE = "test_scores.npz"


def build_upload(
    z: torch.Tensor,
    *,
    config: FedDyMemConfig,
    round_idx: int,
    public: PublicCodebook | None = None,
    noise_key: int = 0,
) -> ReducedMemory:
    """The memory M_k a client uploads in round `round_idx`, from its patch vectors z(x)
    (n, d, H, W): clipped, reduced and noised when the config asks for differential privacy
    (privacy.py), else reduced by the configured memory-reduce; seeded by the config's seed and
    the round. The one place that maps `memory_reduce` to a reducer (the privacy audit builds
    its counterfactual uploads with it too). The heuristic defences `upload_noise` and
    `upload_margin` (privacy/defences.py) act before and after the reduce. With `public_vote`
    the upload is the codebook `public`'s items in the cells z votes for
    (privacy/public_vote.py). Every noise is seeded by the config's seed and the round, and by
    the site's secret `noise_key` when it is > 0 (`defences.defence_seed`)."""
    if config.public_vote:
        if public is None:
            raise ValueError("public_vote needs the public images' codebook")
        from feddymem.privacy.public_vote import public_vote_memory

        return public_vote_memory(
            z, public, config=config, round_idx=round_idx, noise_key=noise_key
        )
    if config.upload_noise <= 0 and config.upload_margin <= 0:
        return _reduce(z, config=config, round_idx=round_idx, noise_key=noise_key)
    from feddymem.privacy import defences

    noisy = defences.noisy_features(
        z,
        relative_std=config.upload_noise,
        seed=defences.defence_seed(config.seed, round_idx, 0, key=noise_key),
    )
    memory = _reduce(noisy, config=config, round_idx=round_idx, noise_key=noise_key)
    return defences.drop_near_copies(memory, z, relative_margin=config.upload_margin)


def _reduce(
    z: torch.Tensor, *, config: FedDyMemConfig, round_idx: int, noise_key: int = 0
) -> ReducedMemory:
    seed = round_seed(config.seed, round_idx)
    if config.dp_clip_norm is not None:
        from feddymem.privacy.dp import private_memory

        return private_memory(z, config=config, round_idx=round_idx, noise_key=noise_key)
    return reduce_memory(z, config=config, seed=seed)


def _row_keys(x: torch.Tensor) -> np.ndarray:
    """(N, d) float32 -> (N,) one opaque value per row, equal exactly when the rows' bytes
    are (to find a memory's items in another by `np.isin`, without a loop over items)."""
    a = np.ascontiguousarray(x.numpy(), dtype=np.float32)
    return a.view(np.dtype((np.void, a.shape[1] * a.itemsize))).ravel()


class FedDyMemClient:
    """Client k of FedDyMem (method.md): trains G_k against M_g and uploads a reduced M_k.

    `train` holds normal images only; a seeded share of them is held out to set the detection
    threshold. Patch features p(x) come from a frozen backbone, so they are computed once and
    cached (float16) in `state_dir`; every round then only runs the small generator.
    """

    def __init__(
        self,
        *,
        train: Sequence[Sample],
        test: Sequence[Sample],
        config: FedDyMemConfig,
        state_dir: Path,
        weights: Path | None = None,
        calibration_fraction: float = 0.1,
        feature_cache: Path | None = None,
        extractor: PatchFeatureExtractor | None = None,
        public: Sequence[Sample] = (),
        noise_key: int = 0,
    ) -> None:
        self.check_config(config)
        if not train:
            raise ValueError("a FedDyMem client needs at least one normal training image")
        if config.public_vote and not public:
            raise ValueError(
                "public_vote needs public normal images of the site's kind: name their roots "
                "in the spec's [[clients]] public = [...] or the site's node config public=..."
            )
        # `public`: normal images anyone may hold (the public vote's codebook; only their
        # vectors are uploaded); the anomalous ones are left out
        self.public_samples = [s for s in public if s.label == 0]
        # a secret of the site's mixed into every noise seed (0: the config's seed alone)
        self.noise_key = noise_key
        self.config = config
        self.test = list(test)
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.feature_cache = None if feature_cache is None else Path(feature_cache)
        self.train_samples, self.calibration = split_calibration(
            [s for s in train if s.label == 0], fraction=calibration_fraction, seed=config.seed
        )
        # `extractor`: a frozen backbone to share with other clients in one process.
        self.detector = MemoryBankDetector(config, weights=weights, extractor=extractor)
        self.image_hw = resolve_size(
            [s.path for s in self.train_samples],
            image_size=config.image_size,
            keep_aspect=config.keep_aspect,
        )
        # tiled (config.tile): the memory describes tiles, cut before the memory-reduce; the
        # site's detector scores tiles and stitches them the same way
        self.detector.tiling_ = self.detector._plan_tiling([s.path for s in self.train_samples])
        if self.detector.tiling_ is not None:
            self.image_hw = self.detector.tiling_.image_hw
        d_in = self.detector.extractor.out_channels
        self.generator: MemoryGenerator | None = (
            MemoryGenerator(
                in_channels=d_in,
                gamma_d=config.gamma_d,
                init=config.generator_init,
                seed=config.seed,
            )
            if config.generator
            else None
        )
        self.optimizer = (
            torch.optim.AdamW(
                self.generator.parameters(),
                lr=config.lr,
                weight_decay=config.weight_decay,
                amsgrad=True,
            )
            if self.generator is not None
            else None
        )
        self.loss = MetricLoss(
            k=config.loss_k,
            j=config.loss_j,
            radius=config.radius,
            margin=config.margin,
            nu=config.nu,
        )
        self.memory: ReducedMemory | None = None
        self.rounds_done = -1
        self._features: torch.Tensor | None = None
        self._public_features: torch.Tensor | None = None
        self._detector_state: int | None = None  # rounds_done when detector_with last ran
        self.calibration_normals_ = len(self.calibration)  # normals the threshold came from
        self.calibration_folds_ = 0  # their cross-fit's folds; 0: the held-out normals alone
        self.calibration_shift_ = 0.0  # added to the cross-fitted scores (`held_out_shift`)
        self._load_state()

    # --- state on disk ---------------------------------------------------------------------

    @classmethod
    def check_config(cls, config: FedDyMemConfig) -> None:
        """Raise ValueError when this kind of client cannot work with `config` (FedDyMem's own
        client works with any; a subclass may need more)."""

    @property
    def dim(self) -> int:
        """d, the length of a memory vector."""
        if self.generator is not None:
            return self.generator.out_channels
        return self.detector.extractor.out_channels

    def _load_state(self) -> None:
        path = self.state_dir / STATE_FILE
        if not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=True)
        if self.generator is not None and "generator" in state:
            self.generator.load_state_dict(state["generator"])
            assert self.optimizer is not None
            self.optimizer.load_state_dict(state["optimizer"])
        if "memory" in state:
            self.memory = ReducedMemory(
                vectors=state["memory"], weights=state["memory_weights"], n_images=state["n_images"]
            )
        self.rounds_done = int(state["rounds_done"])

    def _save_state(self) -> None:
        state: dict[str, object] = {"rounds_done": self.rounds_done}
        if self.generator is not None:
            assert self.optimizer is not None
            state["generator"] = self.generator.state_dict()
            state["optimizer"] = self.optimizer.state_dict()
        if self.memory is not None:
            state["memory"] = self.memory.vectors
            state["memory_weights"] = self.memory.weights
            state["n_images"] = self.memory.n_images
        with atomic_open(self.state_dir / STATE_FILE, "wb") as fh:
            torch.save(state, fh)

    def _features_key(self, samples: Sequence[Sample] | None = None) -> str:
        """Digest of what p(x) depends on: backbone, taps, input size and the files
        (default: the training files)."""
        cfg = self.config
        files = []
        for s in self.train_samples if samples is None else samples:
            st = s.path.stat()
            files.append([str(s.path.resolve()), st.st_size, st.st_mtime_ns])
        tiling = self.detector.tiling_
        tiles = None if tiling is None else [tiling.tile, tiling.overlap]
        if tiling is not None and tiling.pad:  # (unpadded keys stay as they were)
            tiles = [tiling.tile, tiling.overlap, tiling.pad]
        payload = [cfg.backbone, cfg.layers, list(self.image_hw), files]
        if tiles is not None:  # (untiled keys stay as they were, so old caches still match)
            payload.append(tiles)
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:24]

    def _features_path(self, samples: Sequence[Sample] | None = None) -> Path:
        """Where p(x) of `samples` (default: the training images) is cached: the shared cache
        (keyed by content) or the state folder."""
        if self.feature_cache is None:
            name = FEATURES_FILE if samples is None else f"public_{FEATURES_FILE}"
            return self.state_dir / name
        self.feature_cache.mkdir(parents=True, exist_ok=True)
        return self.feature_cache / f"{self._features_key(samples)}.pt"

    def features(self) -> torch.Tensor:
        """p(x) of the training images, (n_k, D, H, W) float16 (of their tiles when tiled,
        (n_k * tiles, D, h, w)), computed once and cached.

        With `feature_cache` set, the cache is shared by every run on the same files, backbone
        and size (a site re-running a federation, a benchmark running many methods).
        """
        if self._features is None:
            self._features = self._cached_features(self.train_samples, what="training")
        return self._features

    def public_features(self) -> torch.Tensor:
        """p(x) of the public images (the public vote's), at the training images' size, cached
        as `features`."""
        if self._public_features is None:
            self._public_features = self._cached_features(self.public_samples, what="public")
        return self._public_features

    def _cached_features(self, samples: Sequence[Sample], *, what: str) -> torch.Tensor:
        key = None if what == "training" else samples
        path = self._features_path(key)
        if path.is_file():
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if tuple(cached["image_hw"]) == self.image_hw and cached["n"] == len(samples):
                return cached["features"]
        report = LoadReport(loaded=0, skipped=[])
        chunks = [
            feats.half()
            for batch in iter_batches(
                samples,
                size=self.image_hw,
                batch_size=self.detector._images_per_batch(),
                with_masks=False,
                report=report,
            )
            for feats in self.detector._tile_features(batch.images)
        ]
        if not chunks:
            raise ValueError(f"none of the {len(samples)} {what} images could be loaded")
        feats = torch.cat(chunks)
        if report.skipped:
            log.warning(
                "%d %s image(s) could not be read: %s",
                len(report.skipped),
                what,
                ", ".join(str(p) for p, _ in report.skipped[:5]),
            )
        with atomic_open(path, "wb") as fh:
            torch.save({"features": feats, "image_hw": list(self.image_hw), "n": len(samples)}, fh)
        return feats

    # --- the round --------------------------------------------------------------------------
    def _embed(self, feats: torch.Tensor) -> torch.Tensor:
        if self.generator is None:
            return feats.float()
        return self.generator(feats.float())

    def _train(self, global_memory: torch.Tensor, *, round_idx: int) -> dict[str, float]:
        """E local epochs of the metric loss against M_g; returns the mean loss."""
        assert self.generator is not None and self.optimizer is not None
        cfg = self.config
        return train_generator(
            self.generator,
            self.features(),
            global_memory.float(),
            self.loss,
            self.optimizer,
            epochs=cfg.local_epochs,
            batch_size=cfg.train_batch_size,
            seed=round_seed(cfg.seed, round_idx),
        )

    @torch.no_grad()
    def _build_memory(self, *, round_idx: int) -> ReducedMemory:
        """Dynamic memory: z(x) of every training image with the current G_k, then reduce."""
        cfg = self.config
        z = self._embedded(self.features())
        codebook = None
        if cfg.public_vote:
            from feddymem.privacy.dp import embeds_through_trained_generator
            from feddymem.privacy.public_vote import public_codebook

            if embeds_through_trained_generator(cfg, rounds=round_idx):
                log.warning(
                    "public vote in round %d through a G_k trained on this site's images: no "
                    "formal (epsilon, delta) (dynamic_memory = false votes once, in round 0; "
                    "docs/privacy.md section 7)",
                    round_idx,
                )

            codebook = public_codebook(
                self._embedded(self.public_features()),
                config=cfg,
                seed=round_seed(cfg.seed, round_idx),
            )
        return build_upload(
            z, config=cfg, round_idx=round_idx, public=codebook, noise_key=self.noise_key
        )

    def _embedded(self, feats: torch.Tensor) -> torch.Tensor:
        """z = G_k(p) of feature maps (N, D, H, W), 64 at a time."""
        return torch.cat([self._embed(feats[i : i + 64]) for i in range(0, feats.shape[0], 64)])

    def fit_round(
        self, *, round_idx: int, global_memory: torch.Tensor | None
    ) -> tuple[ReducedMemory, dict[str, float]]:
        """Round t: train G_k against M_g (t >= 1, when given), rebuild and reduce M_k.

        A round already done (a retried message, a resumed run) returns the stored memory.
        """
        if round_idx <= self.rounds_done and self.memory is not None:
            log.info("round %d already done here: returning the stored memory", round_idx)
            return self.memory, {"n_images": float(self.memory.n_images), "replayed": 1.0}
        metrics: dict[str, float] = {}
        t0 = time.perf_counter()
        feats = self.features()
        metrics["features_s"] = time.perf_counter() - t0
        train = (
            self.generator is not None
            and self.config.metric_loss
            and global_memory is not None
            and round_idx >= 1
            and self.config.local_epochs > 0
        )
        if train:
            assert global_memory is not None
            if global_memory.shape[1] != self.dim:
                raise ValueError(
                    f"global memory has dimension {global_memory.shape[1]}, this client {self.dim}"
                )
            t1 = time.perf_counter()
            metrics.update(self._train(global_memory, round_idx=round_idx))
            metrics["train_s"] = time.perf_counter() - t1
        if self.memory is None or self.config.dynamic_memory:
            t2 = time.perf_counter()
            self.memory = self._build_memory(round_idx=round_idx)
            metrics["reduce_s"] = time.perf_counter() - t2
        self.rounds_done = round_idx
        self._save_state()
        metrics["n_images"] = float(feats.shape[0])
        metrics["memory_items"] = float(self.memory.vectors.shape[0])
        return self.memory, metrics

    # --- inference --------------------------------------------------------------------------
    def scoring_memory(self, global_memory: torch.Tensor) -> torch.Tensor:
        """The bank the site scores against: M_g, or (``score_memory = "global+own"``) M_g and
        the site's own last M_k, both in the space of the final G_k."""
        memory = global_memory.float()
        if self.config.score_memory == "global+own" and self.memory is not None:
            memory = torch.cat([memory, self.memory.vectors.float()])
        return memory.contiguous()

    def detector_with(self, global_memory: torch.Tensor) -> MemoryBankDetector:
        """The client's detector: its final G_k and M_g, threshold from its held-out normals."""
        det = self.detector
        memory = self.scoring_memory(global_memory)
        if (
            self._detector_state == self.rounds_done
            and det.memory_ is not None
            and torch.equal(det.memory_, memory)
        ):
            return det  # already set up for this G_k and M_g (evaluate, then export)
        det.generator = self.generator.eval() if self.generator is not None else None
        det.set_memory(memory, image_hw=self.image_hw)
        self.site_threshold(det, global_memory)
        self._detector_state = self.rounds_done
        return det

    # --- the site's threshold --------------------------------------------------------------
    def site_threshold(self, det: MemoryBankDetector, global_memory: torch.Tensor) -> None:
        """Set `det`'s threshold (and map floor) from this site's normals by the config's rule.

        "holdout": the held-out normals scored against the scoring memory. "crossfit": those,
        and every training normal scored out of fold (`crossfit_results`), so the quantile
        rests on all the site's normals instead of a tenth, the cross-fitted scores raised by
        how far the held-out ones sit above them (`held_out_shift`: G_k was trained on every
        training normal, so a fold is not wholly out of sample); when M_g does not hold the
        site's upload item for item, the held-out normals alone (the reason logged).
        `calibration_normals_` says how many normals set it, `calibration_folds_` in how many
        folds they were cross-fitted (0: held out)."""
        cfg = self.config
        crossfit = (cfg.calibration or "crossfit") == "crossfit"  # FedDyMem's default
        oof = self.crossfit_results(global_memory) if crossfit else None
        n_train = self.features().shape[0] if oof is not None else 0
        self.calibration_folds_ = min(cfg.calibration_folds, n_train)
        self.calibration_shift_ = 0.0
        if oof is None:
            self.calibration_normals_ = len(self.calibration)
            if self.calibration:
                det.calibrate(self.calibration, quantile=cfg.threshold_quantile)
            return
        # G_k was trained on the cross-fitted normals too, so they score a little low; the
        # held-out normals, which nothing saw, say by how much (`held_out_shift`)
        self.calibration_shift_ = det.threshold_from_crossfit(
            oof, self.calibration, quantile=cfg.threshold_quantile
        )
        self.calibration_normals_ = sum(len(r.image_scores) for r in oof) + len(self.calibration)

    def others_items(self, global_memory: torch.Tensor) -> torch.Tensor | None:
        """M_g without this site's last upload, when M_g holds every item of that upload as
        sent (the server kept every item: `server_aggregation = "union"`, or a
        `global_memory_size` of at least the uploads together); None, with the reason
        logged, when it does not (the server's k-means merged them) or the wire format
        changes items on the way back (pq, sq8, sq4)."""
        cfg = self.config
        if self.memory is None:
            return None
        if cfg.wire_dtype not in ("float32", "float16"):
            log.info(
                "cross-fit: the %s wire re-encodes M_g, this site's items cannot be found "
                "in it; threshold from the held-out normals",
                cfg.wire_dtype,
            )
            return None
        own = self.memory.vectors.float()
        if cfg.wire_dtype == "float16":
            own = own.half().float()  # the values the server received
        glob = global_memory.float()
        own_keys, glob_keys = _row_keys(own), _row_keys(glob)
        if not np.isin(own_keys, glob_keys).all():
            log.info(
                "cross-fit: M_g (%d items) does not hold this site's %d uploaded items as sent "
                "(the server merged them); threshold from the held-out normals",
                glob.shape[0],
                own.shape[0],
            )
            return None
        return glob[torch.from_numpy(~np.isin(glob_keys, own_keys))]

    @torch.no_grad()
    def crossfit_results(self, global_memory: torch.Tensor) -> list[ScoreResult] | None:
        """Out-of-fold scores of the training normals: they are split into seeded folds
        (`calibration_folds`), and each fold is scored, with the final G_k, against the other
        sites' items of M_g (`others_items`) and a memory built by this site's upload rule
        (`build_upload`, same round and size) from the other folds, as `scoring_memory` builds
        the real one. None when M_g does not allow it, the images are tiled (a tile is not an
        image), or there are fewer than two training images. The site's detector must be set
        up (`detector_with`, which calls this through `site_threshold`)."""
        cfg, det = self.config, self.detector
        if det.tiling_ is not None:
            return None
        if cfg.public_vote:
            log.info(
                "cross-fit: the public vote uploads no training vector to leave out of a fold; "
                "threshold from the held-out normals"
            )
            return None
        others = self.others_items(global_memory)
        if others is None:
            return None
        feats = self.features()
        n = feats.shape[0]
        folds = min(cfg.calibration_folds, n)
        if folds < 2:
            return None
        z = self._embedded(feats)
        order = np.random.default_rng(cfg.seed).permutation(n)
        results = []
        for fold in range(folds):
            held = np.sort(order[fold::folds])
            rest = torch.from_numpy(np.setdiff1d(order, held))
            own = build_upload(
                z[rest], config=cfg, round_idx=self.rounds_done, noise_key=self.noise_key
            ).vectors.float()
            # as M_g holds it (through the wire), and, with "global+own", as the site adds it
            sent = own.half().float() if cfg.wire_dtype == "float16" else own
            parts = [others, sent, own] if cfg.score_memory == "global+own" else [others, sent]
            index = det._knn_index(torch.cat(parts).contiguous())
            for chunk in torch.from_numpy(held).split(cfg.batch_size):
                patch = det.nearest_patch_scores(z[chunk], index=index)
                results.append(det.result_from_patch_scores(patch))
            log.info("cross-fit: fold %d/%d scored (%d images)", fold + 1, folds, len(held))
        return results

    def evaluate(self, global_memory: torch.Tensor) -> DetectionMetrics:
        """Image AUROC / F1-max (and pixel AUROC / AUPRO where masks exist) on the local test set.

        The per-image scores stay at the site, in ``<state_dir>/test_scores.npz`` (labels,
        image scores, file names), for ROC curves; only the metrics travel.
        """
        return self.evaluate_at_threshold(global_memory)[0]

    def evaluate_at_threshold(
        self, global_memory: torch.Tensor
    ) -> tuple[DetectionMetrics, dict[str, float]]:
        """`evaluate`, plus what the site's own threshold (from its held-out normals, by the
        config's rule) flags on its test set: `threshold`, `recall_at_threshold`,
        `false_alarm_rate_at_threshold`, `precision_at_threshold` and the best recall any
        threshold reaches at that false-alarm rate (`oracle_recall_at_threshold`), with the
        number of test normals, the false-alarm rate's exact 95% interval
        (`false_alarm_rate_ci95_low` / `_high`) and the number of held-out normals the
        threshold came from (`calibration_normals`); empty when the site has no threshold."""
        if not self.test:
            raise ValueError("this client has no test images to evaluate on")
        det = self.detector_with(global_memory)
        metrics, scores = det.evaluate_with_scores(self.test)
        flat = site_threshold_metrics(
            det,
            scores,
            calibration_normals=self.calibration_normals_,
            calibration_folds=self.calibration_folds_,
            calibration_shift=self.calibration_shift_,
        )
        np.savez(
            self.state_dir / SCORES_FILE,
            labels=scores.labels,
            image_scores=scores.image_scores,
            files=np.array([str(s.path) for s in scores.samples]),
        )
        return metrics, flat

    def export(
        self, global_memory: torch.Tensor, path: Path, *, provenance: dict[str, Any] | None = None
    ) -> Path:
        """Write the client's detector (G_k, M_g, threshold) as a `feddymem predict` model file,
        atomically (a scoring service watching `path` swaps to it)."""
        return self.detector_with(global_memory).save(path, provenance=provenance)
