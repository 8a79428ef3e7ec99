"""Config composition (Hydra's compose API) and the checks made before any work starts."""
from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError, ConfigKeyError

from discograd import estimators
from discograd.estimators import ConfigError
from discograd.experiment.build import validate

ROOT = Path(__file__).resolve().parents[1]




def test_defaults_compose_to_gumbel_vae_mnist(cfg_of):
    cfg = cfg_of()
    assert (cfg.estimator.name, cfg.model.name, cfg.data.name) == ("gumbel", "vae", "mnist")
    assert cfg.estimator.tau.init > 0 and cfg.train.steps > 0
    validate(cfg)


@pytest.mark.parametrize("name", ["st", "reinforce", "gumbel", "st_gumbel"])
@pytest.mark.parametrize("model", ["toy", "vae"])
def test_every_estimator_composes_with_every_model(name, model, cfg_of):
    cfg = cfg_of(f"estimator={name}", f"model={model}", "model.latent=categorical")
    assert cfg.estimator.name == name
    validate(cfg)


def test_model_group_sets_its_training_defaults_and_overrides_win(cfg_of):
    toy = cfg_of("model=toy")
    vae = cfg_of("model=vae")
    assert toy.train.batch_size != vae.train.batch_size
    assert cfg_of("model=toy", "train.batch_size=7").train.batch_size == 7


def test_unknown_key_fails_at_composition(cfg_of):
    with pytest.raises(ConfigCompositionException) as e:
        cfg_of("estimator=st", "estimator.baseline=ema")
    assert "baseline" in str(e.value.__cause__ or e.value)


def test_wrong_type_fails_at_composition(cfg_of):
    with pytest.raises(ConfigCompositionException) as e:
        cfg_of("train.steps=many")
    assert "many" in str(e.value.__cause__ or e.value)


def test_bad_enum_value_lists_accepted_options(cfg_of):
    with pytest.raises(ConfigCompositionException) as e:
        cfg_of("estimator=reinforce", "estimator.baseline=moving")
    msg = str(e.value.__cause__ or e.value)
    assert "moving" in msg and "ema" in msg and "learned" in msg


def test_unknown_group_option_fails(cfg_of):
    with pytest.raises(Exception) as e:
        cfg_of("estimator=gumbal")
    assert "gumbal" in str(e.value)


@pytest.mark.parametrize("overrides, key", [
    (["estimator.tau.init=0"], "estimator.tau.init"),
    (["estimator.tau.min=-1"], "estimator.tau.min"),
    (["estimator.tau.every=0"], "estimator.tau.every"),
    (["estimator=reinforce", "estimator.samples=0"], "estimator.samples"),
    (["train.batch_size=50001"], "train.batch_size"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.lr=-0.001"], "train.lr"),
    (["eval.samples=0"], "eval.samples"),
    (["model=toy", "model.dim=0"], "model.dim"),
])
def test_validate_names_key_and_value(overrides, key, cfg_of):
    cfg = cfg_of(*overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert key in str(e.value)
    value = overrides[-1].split("=", 1)[1]
    assert value in str(e.value)


def test_estimator_that_does_not_support_the_latent_kind_is_refused(monkeypatch, cfg_of):
    class BernoulliOnly(estimators.Estimator):
        name = "bernoulli_only"
        kinds = ("bernoulli",)
    monkeypatch.setitem(estimators.REGISTRY, "bernoulli_only", BernoulliOnly)
    cfg = cfg_of("estimator=st", "model.latent=categorical")
    cfg.estimator.name = "bernoulli_only"
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    msg = str(e.value)
    assert "bernoulli_only" in msg and "vae" in msg and "categorical" in msg


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_bad_temperature_fails_before_training(tmp_path):
    r = run_cli("model=toy", "estimator=gumbel", "estimator.tau.init=0",
                f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 2
    assert "estimator.tau.init=0" in r.stderr and "> 0" in r.stderr
    assert not (tmp_path / "run" / "metrics.csv").exists()


def test_cli_unknown_estimator_lists_options(tmp_path):
    r = run_cli("estimator=nope", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode != 0
    assert "nope" in r.stderr and "reinforce" in r.stderr and "st_gumbel" in r.stderr


def test_cli_batch_larger_than_data_fails_before_loading(tmp_path):
    r = run_cli("model=vae", "train.batch_size=60000", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert r.returncode == 2
    assert "train.batch_size=60000" in r.stderr and "50000" in r.stderr


# --- the config groups against the code ------------------------------------------------------------
def test_every_estimator_yaml_matches_the_registry():
    """configs/estimator/NAME.yaml exists exactly for the registered estimators, names itself, and
    composes to a config its class builds from (defaults written in one place)."""
    from discograd.estimators import REGISTRY, build_estimator
    from discograd.experiment.config import CONFIG_DIR, estimator_defaults
    yamls = {p.stem for p in (CONFIG_DIR / "estimator").glob("*.yaml")}
    assert yamls == set(REGISTRY)
    for name, cls in REGISTRY.items():
        cfg = estimator_defaults(name)
        assert cfg.name == name
        kind = cls.kinds[0]
        shape = (3,) if kind == "bernoulli" else (2, 3)
        assert type(build_estimator(cfg, kind, shape)) is cls


def test_every_registered_model_has_its_schema_its_yaml_and_builds(cfg_of):
    """models.MODELS is the one list of models: each has its schema in Hydra's ConfigStore
    (/schema/model/NAME, the fields of the class's ``schema``) and configs/model/NAME.yaml, and
    ``build_model`` of ``model=NAME``'s default config is an instance of the registered class."""
    import dataclasses
    from hydra.core.config_store import ConfigStore
    from discograd.experiment.config import CONFIG_DIR, register_configs
    from discograd.models import MODELS, build_model
    register_configs()
    store = ConfigStore.instance()
    assert {n.removesuffix(".yaml") for n in store.list("schema/model")} == set(MODELS)
    assert {p.stem for p in (CONFIG_DIR / "model").glob("*.yaml")} == set(MODELS)
    for name, cls in MODELS.items():
        node = store.load(f"schema/model/{name}.yaml").node
        assert list(node) == [f.name for f in dataclasses.fields(cls.schema)], name
        cfg = cfg_of(f"model={name}")
        assert cfg.model.name == name
        validate(cfg)
        model = build_model(cfg.model, cfg.data)
        assert type(model) is cls and model.name == name


def test_register_refuses_a_model_without_its_schema_or_builder():
    from discograd.models import LatentModel, register
    from discograd.models.toy import ToyConfig

    class NoSchema(LatentModel):
        name = "no_schema"

    class NoBuilder(LatentModel):
        name = "toy2"
        schema = dataclasses.make_dataclass("Toy2Config", [("name", str, "toy2"),
                                                           ("latent", str, "bernoulli")])

    class Duplicate(LatentModel):
        name = "toy"
        schema = ToyConfig

    with pytest.raises(TypeError, match="schema"):
        register(NoSchema)
    with pytest.raises(TypeError, match="from_config"):
        register(NoBuilder)
    with pytest.raises(RuntimeError, match="duplicate"):
        register(Duplicate)


def test_the_harness_branches_on_no_model_name():
    """Model-specific checks and construction live with the model (models/registry.py): no module
    of the harness compares anything with a model's name."""
    from discograd.models import MODELS
    for path in sorted((ROOT / "discograd" / "experiment").glob("*.py")):
        name = path.name
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Compare, ast.Subscript)):
                literals = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
                assert not literals & set(MODELS), f"{name}:{node.lineno} names a model"


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "discograd" / "configs" / "experiment").glob("*.yaml")))
def test_every_preset_composes_and_validates(preset, cfg_of):
    cfg = cfg_of(f"+experiment={preset}")
    validate(cfg)
    assert cfg.preset is None or cfg.preset.name == preset


def _pairs():
    from discograd.estimators import REGISTRY
    return [(e, m, k) for e in sorted(REGISTRY) for m in ("toy", "vae") for k in ("bernoulli", "categorical")]


@pytest.mark.parametrize("name, model, kind", _pairs())
def test_every_estimator_model_pair_composes_or_is_refused_by_name(name, model, kind, cfg_of):
    """Each estimator x model x latent kind either builds (model and estimator) or is refused
    before any work with a message that names the estimator or the key at fault."""
    from discograd.estimators import REGISTRY
    from discograd.experiment.build import build_model
    from discograd.estimators import build_estimator
    over = [f"estimator={name}", f"model={model}", f"model.latent={kind}"]
    if model == "vae":
        over += ["model.latent_dim=4" if kind == "bernoulli" else "model.latent_dim=2"]
    cfg = cfg_of(*over)
    try:
        validate(cfg)
        m = build_model(cfg)
        build_estimator(cfg.estimator, m.kind, m.latent_shape)
    except ConfigError as e:
        msg = str(e)
        assert name in msg or "estimator." in msg or "model." in msg, msg
        if kind not in REGISTRY[name].kinds:
            assert kind in msg
        return
    assert kind in REGISTRY[name].kinds


def test_help_names_the_app_and_every_option_and_no_internal_group():
    r = subprocess.run([sys.executable, str(ROOT / "run.py"), "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    from discograd.estimators import REGISTRY
    assert r.stdout.startswith("discograd")
    lines = r.stdout.splitlines()
    for name in [*REGISTRY, "toy", "vae", "attention", "mnist", "tucker_toy_045"]:
        assert any(line.split()[:1] == [name] for line in lines), name
    assert "schema" not in r.stdout and "powered by Hydra" not in r.stdout


@pytest.mark.parametrize("preset, gpus", [("slurm_gpu", 1), ("slurm_cpu", 0), ("slurm", None)])
def test_launcher_presets_compose_to_our_slurm_launcher(preset, gpus):
    """slurm, slurm_cpu and slurm_gpu: submitit_slurm's keys, our launcher class (which Hydra
    accepts only from the hydra_plugins package), requeue on timeout."""
    from hydra import compose, initialize_config_dir
    from discograd.experiment.config import CONFIG_DIR, register_configs
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={preset}", "model=toy"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.discograd_slurm.slurm_launcher.SlurmLauncher"
    assert launcher.gpus_per_node == gpus and launcher.max_num_timeout == 3
    from hydra.core.plugins import Plugins
    assert launcher._target_ in Plugins.instance().class_name_to_class     # Hydra found it
