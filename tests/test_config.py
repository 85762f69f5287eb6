"""One config convention for every app: presets, _self_, the shared hydra config, resume=, strict keys."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO, compose_app

from enas_rnn.cli.common import unknown_key
from enas_rnn.conf import APP_SCHEMAS, check_preset, presets, validate
from enas_rnn.errors import ConfigError

CONF = REPO / "conf"
TRAINING_APPS = ("enas-train", "enas-search", "enas-compare", "enas-mrs", "enas-pipeline", "enas-sweep", "enas-compress")


@pytest.mark.parametrize("app", sorted(APP_SCHEMAS))
def test_every_app_config_follows_one_layout(app: str) -> None:
    """hydra: enas first (one shared Hydra config), the groups, _self_, then the presets, then the help."""
    schema, name = APP_SCHEMAS[app]
    doc = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    defaults = [next(iter(d)) if isinstance(d, dict) else d for d in doc["defaults"]]
    assert defaults[0] == f"{name}_schema" and defaults[1] == "hydra"
    assert any(d.startswith("override hydra/help") for d in defaults) and defaults[-1].startswith("override hydra")
    i = defaults.index("_self_")
    assert all(not d.startswith(("experiment", "optional")) for d in defaults[:i])
    if app != "enas-export":
        assert defaults[i + 1] == "experiment" and all(d.startswith(("optional", "override")) for d in defaults[i + 2:])
    hydra = doc.get("hydra") or {}
    assert set(hydra) <= {"callbacks", "run"}, hydra  # the rest lives in conf/hydra/enas.yaml
    assert "resume" in {f for f in schema.__dataclass_fields__} or app == "enas-export"


@pytest.mark.parametrize("app", TRAINING_APPS)
def test_experiment_selects_presets_in_every_app_that_trains(app: str) -> None:
    assert "smoke" in presets(app)
    check_preset(app, "smoke")
    with pytest.raises(ConfigError, match=f"experiment=nope is not a preset of {app}: valid presets are"):
        check_preset(app, "nope")


def test_export_has_no_presets_and_says_so() -> None:
    with pytest.raises(ConfigError, match="enas-export has no presets"):
        check_preset("enas-export", "smoke")


def test_the_sweep_presets_are_experiment_too() -> None:
    cfg = compose_app("sweep", ["experiment=smoke"])
    assert cfg.train.max_steps == 40 and cfg.experiment == "smoke"
    assert presets("enas-sweep") == ["smoke", "study"]


def test_keys_added_with_plus_are_checked_too() -> None:
    schema, _ = APP_SCHEMAS["enas-train"]
    assert "unknown config key 'trian.lr'" in unknown_key(schema, ["+trian.lr=1"])
    assert "'train' has no key 'lrr'" in unknown_key(schema, ["++train.lrr=1"])
    assert unknown_key(schema, ["train.lr=1", "model=cell"]) is None


@pytest.mark.parametrize("app, config, override, needs", [
    ("enas-train", "train", "cell=lstm", "model=cell"),
    ("enas-train", "train", "model.dropout_h=0.3", "model=cell"),
    ("enas-search", "search", "screen.keep=2", "screen=mrs or screen=hidden_cov"),
    ("enas-search", "search", "controller.hidden_size=8", "search=enas"),
    ("enas-pipeline", "pipeline", "select.k=2", "select.strategy=topk"),
    ("enas-pipeline", "pipeline", "launcher.jobs=2", "launcher=local"),
])
def test_a_key_without_effect_is_an_error_naming_what_enables_it(app: str, config: str, override: str,
                                                                 needs: str) -> None:
    extra = ["search=random"] if "controller" in override else []
    cfg = compose_app(config, ["experiment=smoke", override, *extra])
    with pytest.raises(ConfigError, match=f"{override.split('=')[0]}= has no effect.*needs {needs}"):
        validate(cfg, app, [override, *extra])


@pytest.mark.parametrize("config, app, override, key", [
    ("sweep", "enas-sweep", "model.hidden_size=-4", "model.hidden_size=-4"),  # not the emb_size that copies it
    ("compress", "enas-compress", "retrain.max_steps=-1", "retrain.max_steps=-1"),
    ("compress", "enas-compress", "compress.kmeans_iters=-1", "compress.kmeans_iters=-1"),
    ("compress", "enas-compress", "compress.codebook_lr_scale=inf", "compress.codebook_lr_scale=inf"),
    ("search", "enas-search", "search.controller_steps=0", "search.controller_steps=0"),
    ("pipeline", "enas-pipeline", "supernet.dropout_in=2", "supernet.dropout_in=2"),
    ("pipeline", "enas-pipeline", "launcher.jobs=0", "launcher.jobs=0"),
])
def test_every_value_is_checked_and_named_as_the_user_set_it(config: str, app: str, override: str, key: str) -> None:
    extra = ["run=x"] if app == "enas-compress" else []
    cfg = compose_app(config, ["experiment=smoke", override, *extra])
    with pytest.raises(ConfigError) as e:
        validate(cfg, app, [override])
    assert f"invalid config value {key}" in str(e.value)


def test_random_search_may_have_no_controller_steps() -> None:
    validate(compose_app("search", ["experiment=smoke", "search=random", "search.controller_steps=0"]), "enas-search")


def test_the_version_has_one_source() -> None:
    text = (REPO / "setup.cfg").read_text()
    assert "version = attr: enas_rnn.__version__" in text
    assert not any(line.strip().startswith("version = 0") for line in text.splitlines())
