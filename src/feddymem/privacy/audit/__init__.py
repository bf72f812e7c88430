"""Privacy audit: how much of a client's images an attacker recovers from what the client uploads.

The attacker knows the frozen backbone phi and holds *public* images of the same kind (never the
victim's). It trains a decoder from one feature vector (one grid position, D channels) back to the
P x P image patch that position covers, then applies it to every item of the memory a client
uploads. Each setting of the audit is one way of building that upload, run through a real
single-client FedDyMem (round 0, then R rounds of local training against the server's k-means
of the upload), e.g.

* (a) a raw PatchCore-style bank: `generator = false`, `memory_reduce = "none"` (patch vectors
  p(x) as they are, a seeded sample of `client_memory_size`);
* (b) FedDyMem's reduced memory: `memory_reduce = "position_average"` (the paper's weighted
  average) or `"kmeans"` (this project's default), with the trained generator z = G_k(p);
* (c) the reduced memory with noise: `dp_clip_norm` (or `clip_quantile`) and
  `dp_noise_multiplier` (feddymem.privacy.dp), with the (epsilon, delta) it gives.

Scoring, per memory item (a seeded sample of `attack.items`): the reconstruction is compared with
every P x P patch (at every position) of every victim image the memory was built from; the best
match (highest PSNR) is kept and its SSIM reported, so the attack gets every benefit of the doubt.
Because a smooth reconstruction always finds a smooth patch that fits, the same attack is run on
a *twin upload*: what the same setting (the victim's final G_k, the same reduce and noise, its
own noise seed) makes from as many *reference* images of the victim's kind (never seen by the
attacker or the client). Its reconstructions are scored against the victim's patches too:
``delta_psnr`` = PSNR(victim's upload) - PSNR(twin upload) is what the upload reveals about
*these* images rather than about the kind of image. Baselines: the mean public
patch, and decoded raw features of reference images (what "a plausible patch" scores). For a
generator that moved away from identity, a second, oracle attacker who knows G_k fine-tunes the
decoder on public z = G_k(p); the stronger of the two is reported.

Each setting's detector image AUROC is measured on the victim's own test split with the
released memory (its final G_k, memory = the upload), never on training data.

Config file (TOML; relative paths are relative to the file)::

    [audit]
    name = "elpv-mono"        # label of the run
    seed = 0                   # every random step (data split, decoder, memories, noise)
    rounds = 2                 # R rounds after round 0 of the single-client federation
    delta = 1e-5               # delta of the reported (epsilon, delta)

    [data]
    victim = "../data/elpv-mono"   # MVTec layout: the client's train/good subset and test split
    public = "../data/elpv-mono"   # attacker's images (its train/good); the same root as victim
                                   # -> drawn disjoint from the victim and reference images
    victim_images = 100        # the client's training normals (10 % are held out for its threshold)
    public_images = 200        # attacker's training images
    reference_images = 100     # other images of the victim's kind: the twin upload (0: victim_images)
    test_images = 200          # seeded, class-stratified cap on the victim's test split (0: all)

    [attack]
    patch_size = 16            # P, even, >= the feature stride (8); the patch centred on a cell
    hidden = 256               # decoder width (MLP D -> hidden -> hidden -> 3 P P)
    steps = 1000               # decoder training steps on public (feature, patch) pairs
    batch_size = 256
    lr = 0.002                 # AdamW with a one-cycle schedule
    oracle_steps = 300         # fine-tuning on public G_k(p) for a trained generator; 0: off
    items = 384                # memory items attacked per setting (seeded sample)
    grid_items = 6             # patch pairs per setting in grid.png
    whole_images = 16          # images tiled back from an ordered full raw bank and scored

    [model]                    # FedDyMemConfig options shared by every setting
    image_size = 224           # feature options (backbone, layers, image_size, keep_aspect)
                               # and seed may be set here only

    [[settings]]               # one per upload to audit, in table order
    name = "a_raw_bank"
    group = "a"                # a, b or c: the row of the issue's table
    generator = false          # ... any FedDyMemConfig option for this setting
    memory_reduce = "none"
    client_memory_size = 8192
    # clip_quantile = 0.9      # instead of dp_clip_norm: C = this quantile of the norms of the
                               # attacker-side public features (data-independent of the victim)

Outputs in the output folder: ``audit.json`` (settings, AUROC, attack scores, baselines,
guarantees, timings, the resolved config), ``grid.png`` (originals beside reconstructions;
whole-image reconstructions of position-indexed memories) and ``auroc_vs_psnr.png``.
Working files (feature cache, client states) go to ``<out>/work``.

Modules: `config` (the TOML file), `data` (image sets, patches, features), `decoder`
(the inversion decoder), `attack` (the attacker), `scores` (PSNR, SSIM, best match), `setting`
(one upload setting), `figures`, `report` (the Markdown table), `run` (the whole audit).
"""

from feddymem.method.client import build_upload
from feddymem.privacy.audit.attack import Attacker
from feddymem.privacy.audit.config import (
    AttackSpec,
    AuditConfig,
    AuditRun,
    DataSpec,
    SettingSpec,
    load_audit_config,
    parse_audit_config,
)
from feddymem.privacy.audit.data import (
    AuditData,
    PatchSet,
    extract_patches,
    load_patch_set,
    select_data,
    tile_patches,
)
from feddymem.privacy.audit.decoder import PatchDecoder, train_decoder
from feddymem.privacy.audit.figures import save_grid, save_plot
from feddymem.privacy.audit.report import (
    format_defence_table,
    format_identification_table,
    format_membership_table,
    format_table,
)
from feddymem.privacy.audit.run import run_audit
from feddymem.privacy.audit.scores import (
    MatchScores,
    best_match,
    psnr,
    score_reconstructions,
    ssim,
)
from feddymem.privacy.audit.setting import SettingResult, audit_setting, run_client

__all__ = [
    "AttackSpec",
    "Attacker",
    "AuditConfig",
    "AuditData",
    "AuditRun",
    "DataSpec",
    "MatchScores",
    "PatchDecoder",
    "PatchSet",
    "SettingResult",
    "SettingSpec",
    "audit_setting",
    "best_match",
    "build_upload",
    "extract_patches",
    "format_defence_table",
    "format_identification_table",
    "format_membership_table",
    "format_table",
    "load_audit_config",
    "load_patch_set",
    "parse_audit_config",
    "psnr",
    "run_audit",
    "run_client",
    "save_grid",
    "save_plot",
    "score_reconstructions",
    "select_data",
    "ssim",
    "tile_patches",
    "train_decoder",
]
