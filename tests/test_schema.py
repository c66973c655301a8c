"""params.schema.json: what `litpipe schema` writes from the models, named by params.yaml for editors; it takes
every valid params.yaml, and refuses each case the tests of params validation refuse where a JSON Schema can."""

import argparse
import copy
import json

import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from litpipe import schema
from litpipe.config import Params, load_params
from litpipe.errors import ConfigError
from litpipe.yaml12 import read_yaml

from . import test_config
from .helpers import ROOT
from .test_faults import BAD_FILES, BAD_PARAMS

PARAMS_TEXT = (ROOT / "params.yaml").read_text()
SECTIONS = [f.annotation.__name__ for f in Params.model_fields.values() if issubclass(f.annotation, BaseModel)]
DEFAULT = read_yaml(PARAMS_TEXT)


def with_changes(changes: dict[str, object]) -> dict:
    """A copy of the repository's params with dotted keys set."""
    changed = copy.deepcopy(DEFAULT)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = changed
        for key in parents:
            node = node[key]
        node[leaf] = value
    return changed


def parametrized(test) -> list:
    """The values of a test's @pytest.mark.parametrize."""
    (mark,) = [mark for mark in test.pytestmark if mark.name == "parametrize"]
    return list(mark.args[1])


# Every params.yaml that litpipe refuses in tests/test_faults.py and tests/test_config.py, as its text.
REFUSED = {
    **{f"faults: {case}": PARAMS_TEXT.replace(line, new) for case, (line, new, _) in BAD_PARAMS.items()},
    **{f"faults: file {case}": text for case, (text, _) in BAD_FILES.items()},
    **{
        f"config: {section}.{key}={value!r}": yaml.safe_dump(test_config.modified(DEFAULT, section, key, value))
        for section, key, value, _ in parametrized(test_config.test_bad_values_name_the_key_and_what_is_allowed)
    },
    **{
        f"config: search.space.{key} ignored by trials": yaml.safe_dump(
            with_changes({"search.space": {"model.kwargs.mlp.width": [16, 32], key: values}})
        )
        for key, values, _ in parametrized(test_config.test_a_search_key_that_trials_ignore_is_refused_in_one_line)
    },
    **{
        f"config: {case}": yaml.safe_dump(with_changes(changes))
        for case, changes in {
            "unknown key optim.lrate": {"optim.lrate": 0.01},
            "unknown section optimiser": {"optimiser": {}},
            "missing train.max_epochs": {"train": {k: v for k, v in DEFAULT["train"].items() if k != "max_epochs"}},
            "search key model.widht": {"search.space": {"model.widht": [1, 2]}},
            "search value optim.lr -1": {"search.space": {"optim.lr": [0.01, -1]}},
            "override optim.lr=-1": {"optim.lr": -1},
            "lr_find.min_lr above max_lr": {"lr_find.min_lr": 10.0},
            "precision 16-mixed on the cpu": {"train.precision": "16-mixed", "train.accelerator": "cpu"},
        }.items()
    },
    "config: not valid YAML": "seed: [1,\n",
}

# The cases above that a JSON Schema cannot refuse, each with why: the models check them, the schema lets them by.
NOT_YAML = "not a YAML document: there is nothing to validate (an editor's YAML parser flags it itself)"
CANNOT_EXPRESS = {
    "faults: float as an integer": "JSON has one number type: JSON Schema counts 1e3 (1000.0) as an integer",
    "faults: nan clipping": "NaN is no JSON value, and it compares false with any bound a schema could set",
    "faults: duplicate key": NOT_YAML,
    "faults: duplicate top-level key": NOT_YAML,
    "faults: file unparsable": NOT_YAML,
    "faults: file a python object": NOT_YAML,
    "config: not valid YAML": NOT_YAML,
    "config: lr_find.min_lr above max_lr": "compares two values (LrFindParams.ordered): no JSON Schema keyword does",
    "config: precision 16-mixed on the cpu": "a rule across keys (TrainParams.supported): if/then would copy the validator",
}
# Not in the schema either, and not among the cases above: the other rules across keys (DataParams.columns_apart,
# OptimParams.takes_effect, Params.freezing_has_weights, ONLY_WITH, a grid of ranges, SQLite shared by workers)
# and, within a search.space range, low below high, log with low above 0, step not with log and an integer step.


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    written = json.loads((ROOT / schema.SCHEMA_FILE).read_text())
    jsonschema.Draft7Validator.check_schema(written)
    return jsonschema.Draft7Validator(written)


def test_the_schema_file_is_what_the_models_give():
    assert (ROOT / schema.SCHEMA_FILE).read_text() == schema.text(), "params.schema.json is stale: `litpipe schema`"


def test_every_section_refuses_unknown_keys(validator):
    sections = [validator.schema, *(validator.schema["definitions"][name] for name in SECTIONS)]
    assert [section["additionalProperties"] for section in sections] == [False] * len(sections)


def test_params_yaml_names_the_schema_for_the_yaml_language_server():
    assert PARAMS_TEXT.split("\n", 1)[0] == f"# yaml-language-server: $schema={schema.SCHEMA_FILE}"


def test_schema_check_exits_1_in_one_line_where_the_file_is_stale(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(PARAMS_TEXT)
    assert schema.main(argparse.Namespace(check=True)) == 1  # absent
    assert capsys.readouterr().err.count("\n") == 1
    assert schema.main(argparse.Namespace(check=False)) == 0
    assert schema.main(argparse.Namespace(check=True)) == 0
    (tmp_path / schema.SCHEMA_FILE).write_text("{}\n")
    assert schema.main(argparse.Namespace(check=True)) == 1
    assert capsys.readouterr().err.endswith("run `litpipe schema` to write it\n")


VALID = {
    "the repository's": {},
    "integers for floats, 1.0e-5 style floats": {
        "train.gradient_clip_val": 1,
        "optim.lr": 2.0e-3,
        "lr_find.min_lr": 1e-7,
    },
    "null arguments": {"model.kwargs": None},
    "a network without arguments": {"model.kwargs.mlp": None, "model.kwargs.resnet18": {}},
    "a torchvision network": {"model.arch": "resnet18", "model.stem": "small", "data.image_size": 32},
    "your own network": {"model.arch": "nets/small.py:SmallResNet", "model.kwargs": {"SmallResNet": {"channels": 16}}},
    "a package's network": {"model.arch": "nets.small:Net", "model.kwargs": {"Net": {"sizes": [8, 4], "act": None}}},
    "starting weights": {"model.weights": "models/pretrained.pt", "train.freeze_epochs": 2},
    "a table": {"data.dataset": "wine", "data.missing": "impute", "optim.loss": "auto"},
    "seeds and a database": {"replicates.seeds": [0, 1, 2], "search.storage": "postgresql://u@h/db"},
    "sampled ranges": {
        "search.sampler": "tpe",
        "search.space": {
            "model.kwargs.mlp.dropout": {"low": 0.0, "high": 0.5, "step": 0.1},
            "model.kwargs.mlp.depth": {"low": 1, "high": 3},
            "optim.lr": {"low": 1.0e-4, "high": 0.1, "log": True},
            "model.arch": ["mlp", "cnn"],
            "optim.name": ["adam", "sgd"],
            "train.augment_flip": [False, True],
            "train.batch_size": {"low": 16, "high": 128, "step": 16},
        },
    },
    "lr_find multiples": {"search.space": {"optim.lr": {"lr_find": [0.3, 1, 3]}, "optim.weight_decay": [0, 1e-4]}},
}


@pytest.mark.parametrize("variant", VALID, ids=list(VALID))
def test_valid_params_pass(tmp_path, validator, variant):
    params = with_changes(VALID[variant])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    load_params(tmp_path / "params.yaml")  # litpipe takes it
    assert [error.message for error in validator.iter_errors(params)] == []


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_what_litpipe_refuses_the_schema_refuses_or_lists_why_it_cannot(tmp_path, validator, case):
    (tmp_path / "params.yaml").write_text(REFUSED[case])
    with pytest.raises(ConfigError):
        load_params(tmp_path / "params.yaml")
    try:
        errors = list(validator.iter_errors(read_yaml(REFUSED[case])))
    except (ConfigError, yaml.YAMLError):
        errors = []  # not YAML: no document
    if case in CANNOT_EXPRESS:
        assert errors == [], f"the schema refuses it now: take {case!r} off CANNOT_EXPRESS"
    else:
        assert errors, "the schema takes what litpipe refuses"


def test_each_case_the_schema_cannot_express_is_one_of_the_tests():
    assert set(CANNOT_EXPRESS) <= set(REFUSED)
