"""What the command line does before Hydra starts a job: every job of the command is composed and
validated here, so that a bad value is refused before any folder is made or any job queued.

- ``precheck(argv)``: one run, or each job of a multirun (``-m``: the sweep expanded as Hydra's
  basic sweeper will), composed with Hydra's compose API and checked by :func:`validate`. A
  refused single run prints one message and exits 2; a sweep with invalid jobs is refused as a
  whole, one line per bad job, unless ``sweep.invalid=run_valid`` (then the valid jobs run and the
  invalid ones are listed as ``refused`` in the sweep report).
- ``explain(exc, overrides)``: Hydra's composition errors in the words of the command line (the
  key or option as typed, what is accepted, the nearest accepted name), without internal schema
  class names.
- ``name_preset(message, overrides)``: a refused value that a preset set says so.
"""
from __future__ import annotations

import difflib
import logging
import re
import sys

from discograd.errors import EXIT_INVALID, ConfigError
from .shrink import shrink, shrink_steps

log = logging.getLogger("discograd")

# --- Hydra's errors, in the command line's words ------------------------------------------------
def _nearest(word: str, options) -> str:
    near = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {near[0]}?" if near else ""


def _typed(overrides, key: str) -> str:
    """The override as the user typed it for ``key`` (``+experiment=x`` for group experiment)."""
    for o in overrides:
        k = o.split("=", 1)[0].lstrip("+~")
        if k == key:
            return o
    return key


def _keys_at(parent: str, overrides) -> list[str]:
    """The keys of the config node ``parent`` ('' = the root) with the command's group choices."""
    from omegaconf import OmegaConf
    from .config import compose_config
    groups = [o for o in overrides if "=" in o and "." not in o.split("=", 1)[0]]
    hydra = parent == "hydra" or parent.startswith("hydra.")
    try:
        cfg = compose_config(groups, hydra=hydra)
    except Exception:  # noqa: BLE001 - a suggestion is a courtesy
        cfg = compose_config([], hydra=hydra)
    node = cfg if not parent else OmegaConf.select(cfg, parent)
    return [str(k) for k in node.keys()] if node is not None and hasattr(node, "keys") else []


def explain(exc: BaseException, overrides) -> str:
    """One message for a composition error: what was typed, what is accepted, the nearest name."""
    text = str(exc)
    cause = str(exc.__cause__) if exc.__cause__ is not None else ""
    m = re.search(r"Could not find '([^']+)'", text)
    if m:                                                     # a missing group option
        group, option = m.group(1).rsplit("/", 1)
        listed = text.split(f"Available options in '{group}':", 1)
        options = [o.strip() for o in listed[1].split("Config search path")[0].split()] \
            if len(listed) == 2 else []
        typed = _typed(overrides, group)
        if not options:
            return f"{typed}: there is no option '{option}' in {group}"
        return (f"{typed} is not an option of {group}{_nearest(option, options) or ';'} "
                "accepted: " + ", ".join(options))
    m = re.search(r"Key '([^']+)' (?:not in|is not in)", cause)
    full = re.search(r"full_key: (\S+)", cause)
    if m and full:                                            # a key that does not exist
        key = full.group(1)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        keys = _keys_at(parent, overrides)
        prefix = f"{parent}." if parent else ""
        where = f"keys of {parent}" if parent else "top-level keys"
        near = _nearest(m.group(1), keys)
        near = near.replace("did you mean ", f"did you mean {prefix}") if near else ";"
        return (f"{key} is not a config key{near} {where}: {', '.join(keys)} "
                "(README.md, 'Config keys')")
    m = re.search(r"Invalid value '([^']*)', expected one of \[([^\]]*)\]", cause)
    if m and full:                                            # an option outside an enum
        options = [o.strip() for o in m.group(2).split(",")]
        return (f"{full.group(1)}={m.group(1)} is invalid{_nearest(m.group(1), options) or ';'} accepted: "
                + ", ".join(options))
    m = re.search(r"Value '([^']*)' of type '(\w+)' could not be converted to (\w+)", cause)
    if m and full:                                            # a value of the wrong type
        return f"{full.group(1)}={m.group(1)} is invalid: it must be of type {m.group(3).lower()}"
    lines = [ln for ln in (text + ("\n" + cause if cause else "")).splitlines()
             if ln.strip() and not re.match(r"\s*(object_type|reference_type)=", ln)
             and not ln.startswith("To append to your config")]
    return re.sub(r"'(\w+)Config'", r"'\1'", "\n".join(lines))


# --- a refused value that a preset chose --------------------------------------------------------
def _preset_keys(name: str) -> dict[str, object]:
    """The dotted keys a preset (configs/experiment/NAME.yaml) sets, except its ``preset`` block."""
    import yaml
    from .config import CONFIG_DIR, flat
    path = CONFIG_DIR / "experiment" / f"{name}.yaml"
    if not path.exists():
        return {}
    raw = yaml.safe_load(path.read_text()) or {}
    raw.pop("defaults", None)
    raw.pop("preset", None)
    return flat(raw)


def name_preset(message: str, overrides) -> str:
    """``message`` plus, when it names a key that the command's preset set (and the command did
    not), which preset set it and how to override it."""
    presets = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("experiment=")]
    if not presets:
        return message
    typed = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    for preset in presets:
        keys = _preset_keys(preset)
        for key, value in keys.items():
            if key in typed:
                continue
            if re.search(rf"(?<![\w.]){re.escape(key)}=", message):
                return (f"{message} (the value {key}={value} comes from +experiment={preset}; "
                        f"override it on the command line, e.g. {key}=...)")
    return message


# --- the check of a whole command ---------------------------------------------------------------
def _job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The overrides of each job: the command's own for a run; the sweep's expansion (Hydra's
    basic sweeper: the product of every comma-separated list, in its order) for a multirun."""
    if not multirun:
        return [list(overrides)]
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    batches = BasicSweeper.split_arguments(parsed, max_batch_size=None)
    return [job for batch in batches for job in batch]


def _refuse_new_keys(overrides: list[str]) -> None:
    """``+train.step=3`` makes Hydra add a key that nothing reads (a silent typo of
    ``train.steps``): refused like ``train.step=3``. Groups (``+experiment=NAME``), ``++`` and
    Hydra's own keys are left to Hydra."""
    from omegaconf import OmegaConf
    from .config import compose_config
    for o in overrides:
        key = o.split("=", 1)[0]
        if not key.startswith("+") or key.startswith("++") or "." not in key \
                or key[1:].startswith("hydra."):
            continue
        key = key[1:]
        rest = [x for x in overrides if x != o]
        parent, name = key.rsplit(".", 1)
        try:
            cfg = compose_config(rest)
        except Exception:  # noqa: BLE001 - the command's other errors are reported elsewhere
            continue
        node = OmegaConf.select(cfg, parent, default=None)
        typed = OmegaConf.is_dict(node) and OmegaConf.get_type(node) not in (dict, None)
        if not typed or OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
            continue                 # a free-form node (preset.published) takes new keys
        keys = _keys_at(parent, rest)
        near = _nearest(name, keys).replace("did you mean ", f"did you mean {parent}.") or ";"
        raise ConfigError(f"{o} adds a key that discograd does not read{near} keys of {parent}: "
                          f"{', '.join(keys)} (README.md, 'Config keys')")


_ABSENT = object()


def check_job(overrides: list[str], device: bool) -> object:
    """The job's config (shrunk like the job will be), or ConfigError with the message a user
    reads (composition errors explained, a preset's value named)."""
    from .build import pick_device, validate
    from .config import compose_config, plain
    try:
        cfg = compose_config(overrides)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - Hydra's composition errors, one family per cause
        raise ConfigError(explain(e, overrides)) from None
    _refuse_new_keys(overrides)
    shrink(cfg)
    try:
        validate(cfg)
        if device:
            pick_device(plain(cfg.device))
    except ConfigError as e:
        raise ConfigError(name_preset(str(e), overrides)) from None
    return cfg


def precheck(argv: list[str]) -> None:
    """Refuse a command whose runs cannot work, before Hydra makes a folder or starts a job:
    one message (exit code 2) for a run, one line per invalid job for a sweep. Returns when
    there is nothing to refuse (or nothing for it to check: help, completion, Hydra's own
    config options)."""
    from hydra._internal.utils import get_args_parser
    try:
        args, _ = get_args_parser().parse_known_args(argv)
    except SystemExit:
        return                                   # Hydra prints its own usage error
    if (args.help or args.hydra_help or args.info or args.shell_completion or args.config_path
            or args.config_name or args.config_dir or args.experimental_rerun):
        return
    overrides = list(args.overrides)
    try:
        shrink_steps()
        if args.cfg and args.multirun:
            show_sweep(overrides, args.cfg, args.package)     # exits
        if args.cfg:                             # printing a config: composing is the check
            jobs = _job_overrides(overrides, args.multirun)[:1]
            from .config import compose_config
            try:
                compose_config(jobs[0])
            except Exception as e:  # noqa: BLE001
                raise ConfigError(explain(e, overrides)) from None
            return
        jobs = _job_overrides(overrides, args.multirun)
    except ConfigError as e:
        _refuse(str(e))
    except Exception as e:  # noqa: BLE001 - a sweep Hydra cannot parse: Hydra says why
        log.debug("precheck could not expand %s: %r", overrides, e)
        return
    if not args.multirun:
        try:
            check_job(jobs[0], device=True)
        except ConfigError as e:
            _refuse(str(e))
        return
    bad, good = [], []
    for i, job in enumerate(jobs):
        try:
            good.append(check_job(job, device=False))
        except ConfigError as e:
            shown = " ".join(o for o in job if o not in overrides) or "(no sweep keys)"
            bad.append(f"  job {i} ({shown}): {str(e).splitlines()[0] if e.args else e}")
    if not bad:
        return
    policy = "run_valid" if any(o == "sweep.invalid=run_valid" for o in overrides) else "refuse"
    head = f"{len(bad)} of {len(jobs)} job(s) of this sweep are invalid"
    if policy == "run_valid":
        print(f"discograd: {head}; running the {len(jobs) - len(bad)} valid one(s) "
              "(sweep.invalid=run_valid); the invalid ones are listed as refused in the sweep "
              "report:\n" + "\n".join(bad), file=sys.stderr, flush=True)
        return
    _refuse(f"{head}; no job was started:\n" + "\n".join(bad)
            + "\nFix or drop them, or run the valid jobs only with sweep.invalid=run_valid",
            what="invalid sweep")


def show_sweep(overrides: list[str], which: str, package: str | None = None) -> None:
    """``python run.py -m ... --cfg job|hydra|all``, which Hydra itself refuses: print the config
    of every job of the sweep (composed as each job will be, launcher included), then exit 0; a
    job that does not compose is refused (exit code 2) as the sweep would be."""
    from omegaconf import OmegaConf
    from .config import compose_config
    for i, job in enumerate(_job_overrides(overrides, True)):
        try:
            cfg = compose_config(job, hydra=which != "job")
        except Exception as e:  # noqa: BLE001
            _refuse(f"job {i} ({' '.join(job)}): {explain(e, job)}")
        if which == "hydra":
            cfg = cfg.hydra
        elif which == "job" and "hydra" in cfg:
            del cfg["hydra"]
        if package:
            cfg = OmegaConf.select(cfg, package)
        print(f"# job {i}: {' '.join(job)}")
        print(OmegaConf.to_yaml(cfg) if OmegaConf.is_config(cfg) else cfg)
    sys.exit(0)


def _refuse(message: str, what: str = "invalid configuration") -> None:
    print(f"discograd: {what}: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_INVALID)


__all__ = ["precheck", "check_job", "explain", "name_preset"]
