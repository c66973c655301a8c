"""params.yaml, loaded into one typed, validated, immutable `Params`.

Every tunable number lives in params.yaml and nowhere else: these models declare types and
allowed ranges but no defaults, so a missing key is an error rather than a silent fallback.
Validation is strict: a value has the type its key declares (`true` is not a number, "3" is not an
integer; an integer is a valid float), every float is finite, and a key written twice is an error
rather than the last one winning. The file is read as YAML 1.2, as DVC reads it: `1e-3` is a number,
`off` and `yes` are strings.
"""

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from litpipe.data import DATASETS, TABLES
from litpipe.errors import ConfigError
from litpipe.search import space as search_space
from litpipe.yaml12 import read_yaml

INT32_MAX = 2**31 - 1  # counts reach C ints in torch, NumPy and CUDA calls
Fraction = Annotated[float, Field(gt=0, lt=1)]
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
PositiveInt = Annotated[int, Field(ge=1, le=INT32_MAX)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # what NumPy, scikit-learn and Lightning's seeding accept
# params.schema.json (schema.py) states what the validators below check where a JSON Schema can say it; its
# identifiers are ASCII (editors' regular expressions), where Python's isidentifier() takes any letter.
IDENTIFIER = "^[A-Za-z_][A-Za-z0-9_]*$"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class DataParams(Section):
    dataset: Annotated[str, Field(json_schema_extra={"enum": list(DATASETS)})]
    root: str
    test_fraction: Fraction
    val_fraction: Fraction
    split_seed: Seed
    image_size: Annotated[int, Field(ge=1, le=4096)] | None  # None: the dataset's own size
    train_images: PositiveInt | None  # a stratified sample of the training split; None: all of it
    # Tables (data/table.py): what to predict from which columns, and how.
    task: Literal["classification", "regression"] | None  # None: images classify; a table's target type decides
    target: str | None  # the column to predict; None: the embedded table's own
    features: list[str] | None  # the columns it is predicted from; None: every other column
    categorical: list[str]  # numeric columns to one-hot encode as well (string columns always are)
    missing: Literal["refuse", "impute"]  # impute: the training median or mode, plus an indicator column

    @field_validator("dataset")
    @classmethod
    def known_dataset(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
        return name

    @model_validator(mode="after")
    def columns_apart(self) -> "DataParams":
        if self.dataset not in TABLES:
            given = {"task": self.task == "regression", "target": self.target, "features": self.features}
            given["categorical"] = self.categorical
            for key, value in given.items():
                if value:
                    raise ValueError(
                        f"data.{key} is for tables (data.dataset table, diabetes or wine), not {self.dataset}"
                    )
        if self.target is not None and self.target in (self.features or []):
            raise ValueError(f"data.features lists the target {self.target!r}: a column cannot predict itself")
        listed = self.features if self.features is not None else self.categorical
        unlisted = [name for name in self.categorical if name not in listed or name == self.target]
        if unlisted:
            raise ValueError(f"data.categorical: {unlisted[0]!r} is not among the features")
        return self


WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")  # a file of starting weights (models/weights.py)
WEIGHTS_PATTERN = rf"^(?!/)[\s\S]*({'|'.join(map(re.escape, WEIGHT_SUFFIXES))})$"  # what ModelParams.weights_file takes
WeightsFile = Annotated[str, Field(json_schema_extra={"pattern": WEIGHTS_PATTERN})]


# What ModelParams.named takes: a name, or module:Class (the module a file's path or a dotted package name).
ARCH_PATTERN = r"^[^:\s]([^:]*[^:\s])?$|^[^:\s][^:]*:[A-Za-z_]\w*$"
Network = Annotated[str, Field(json_schema_extra={"pattern": ARCH_PATTERN})]
# model.kwargs as per_network and arguments_named take it: null for none, a mapping of each network's arguments.
KWARGS_SCHEMA = {
    "type": ["object", "null"],
    "propertyNames": {"pattern": IDENTIFIER},
    "additionalProperties": {
        "type": ["object", "null"],
        "propertyNames": {"pattern": IDENTIFIER},
        "additionalProperties": {"type": ["number", "string", "boolean", "array", "null"]},
    },
}


class ModelParams(Section):
    arch: Network  # litpipe's, torchvision's or your own network (models/zoo.py); checked when a stage starts
    # Each network's constructor arguments, under its name (your own: its class's name); the one model.arch
    # names is used, so `-S model.arch=cnn` trains the cnn with its own. Checked against its signature.
    kwargs: Annotated[dict[str, dict[str, Any]], WithJsonSchema(KWARGS_SCHEMA)]
    stem: Literal["auto", "small", "standard"]  # torchvision's CNNs: auto = small under 64 pixels
    weights: WeightsFile | None  # starting weights: a file of the repository, tracked by DVC (models/weights.py)

    @property
    def arguments(self) -> dict[str, Any]:
        """The arguments of the network model.arch names ({} where model.kwargs has none: its defaults)."""
        return self.kwargs.get(search_space.network_key(self.arch), {})

    def trained(self) -> dict[str, Any]:
        """These params with the arguments of the network trained only, as a run's records show them."""
        return {**self.model_dump(), "kwargs": {search_space.network_key(self.arch): self.arguments}}

    @field_validator("weights")
    @classmethod
    def weights_file(cls, weights: str | None) -> str | None:
        if weights is not None and (not weights.endswith(WEIGHT_SUFFIXES) or Path(weights).is_absolute()):
            raise ValueError(f"a {', '.join(WEIGHT_SUFFIXES)} file, relative to the repository root (got {weights!r})")
        return weights

    @field_validator("arch")
    @classmethod
    def named(cls, arch: str) -> str:
        module, colon, name = arch.partition(":")
        if not arch.strip() or arch != arch.strip() or (colon and not (module and name.isidentifier())):
            raise ValueError(f"a network's name, or package.module:Class or path/to/file.py:Class (got {arch!r})")
        return arch

    @field_validator("kwargs", mode="before")
    @classmethod
    def per_network(cls, kwargs: Any) -> Any:
        if kwargs is None:
            return {}
        # The arguments of a network once sat directly under model.kwargs: say where they go now.
        if isinstance(kwargs, dict):
            for network, arguments in kwargs.items():
                if not isinstance(arguments, dict | None):
                    raise ValueError(  # noqa: TRY004  (pydantic reports a ValueError as the key's one line)
                        f"{network}: {arguments!r} is not a mapping; each network's arguments go under its name, "
                        f"e.g. model.kwargs.mlp.{network}"
                    )
            return {network: arguments or {} for network, arguments in kwargs.items()}
        return kwargs

    @field_validator("kwargs")
    @classmethod
    def arguments_named(cls, kwargs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for network, arguments in kwargs.items():
            if not network.isidentifier():
                raise ValueError(f"{network!r} is not a network's name (a class's name for your own)")
            for key, value in arguments.items():
                if not key.isidentifier():
                    raise ValueError(f"{network}.{key!r} is not an argument name")
                if not isinstance(value, int | float | str | bool | list | type(None)):
                    raise ValueError(
                        f"{network}.{key}: a number, string, boolean, list or null (got {type(value).__name__})"
                    )
        return kwargs


class OptimParams(Section):
    name: Literal["adam", "adamw", "sgd"]  # models/optim.py
    lr: Annotated[float, Field(gt=0, le=10)]
    weight_decay: Annotated[float, Field(ge=0)]
    momentum: Annotated[float, Field(ge=0, lt=1)]  # sgd
    nesterov: bool  # sgd
    scheduler: Literal["plateau", "cosine", "onecycle", "none"]
    warmup_epochs: Count
    plateau_factor: Fraction
    plateau_patience: Count
    loss: Literal["auto", "huber"]  # auto: cross-entropy to classify, mean squared error to regress; huber: regress

    @model_validator(mode="after")
    def takes_effect(self) -> "OptimParams":
        if self.nesterov and not (self.name == "sgd" and self.momentum > 0):
            raise ValueError("nesterov needs name: sgd and a momentum above 0")
        return self


# Optimiser settings that only one optimiser or schedule reads: the key, and the setting that must hold for it
# to take effect (a search over the key would otherwise train the same network in every trial).
ONLY_WITH = {
    "optim.momentum": ("optim.name", "sgd"),
    "optim.nesterov": ("optim.name", "sgd"),
    "optim.plateau_factor": ("optim.scheduler", "plateau"),
    "optim.plateau_patience": ("optim.scheduler", "plateau"),
}


class TrainParams(Section):
    batch_size: PositiveInt
    steps_per_call: Annotated[int, Field(ge=1, le=1024)]  # optimizer steps per Lightning batch (models/lit_model.py)
    max_epochs: PositiveInt
    early_stopping_patience: PositiveInt
    gradient_clip_val: Annotated[float, Field(ge=0)]
    swa_epoch_start: Annotated[float, Field(gt=0, le=1)]
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"]
    devices: PositiveInt  # per node, for the fit (DDP when more than one); other stages use one
    num_nodes: PositiveInt
    strategy: Literal["auto", "ddp"]
    precision: Literal["32-true", "bf16-mixed", "16-mixed"]
    compile: bool  # torch.compile the network for training
    data_path: Literal["auto", "resident", "loader"]  # see data/prepared.py
    resident_max_mb: Annotated[float, Field(ge=0)]  # auto: larger splits stream through the loader
    loader_workers: Count  # DataLoader worker processes on the loader path
    augment_flip: bool  # random horizontal flips of training images
    augment_crop: Annotated[int, Field(ge=0, le=1024)]  # random crops: pad by this many pixels, crop back
    freeze_epochs: Count  # epochs that train only the head, on model.weights
    resume_every_minutes: Annotated[float, Field(ge=0)]  # the fit's resume points (preemption.py); 0: on a signal

    @model_validator(mode="after")
    def supported(self) -> "TrainParams":
        if self.precision == "16-mixed" and self.accelerator == "cpu":
            raise ValueError("precision 16-mixed needs a GPU; on the CPU use 32-true or bf16-mixed")
        return self


class SanityParams(Section):
    overfit_epochs: PositiveInt
    overfit_max_loss: Annotated[float, Field(gt=0)]
    profile_batches: Annotated[int, Field(ge=2, le=INT32_MAX)]


class LrFindParams(Section):
    min_lr: Annotated[float, Field(gt=0)]
    max_lr: Annotated[float, Field(gt=0)]
    num_training: Annotated[int, Field(ge=10, le=INT32_MAX)]

    @model_validator(mode="after")
    def ordered(self) -> "LrFindParams":
        if self.min_lr >= self.max_lr:
            raise ValueError(f"min_lr ({self.min_lr}) must be below max_lr ({self.max_lr})")
        return self


Storage = Annotated[str, Field(json_schema_extra={"pattern": "^journal$|://"})]  # SearchParams.known_storage


class SearchParams(Section):
    enabled: bool
    sampler: Literal["grid", "random", "tpe"]
    n_trials: PositiveInt  # random and tpe; the grid runs each of its points once
    n_workers: PositiveInt
    storage: Storage  # "journal" (a file next to the results) or an RDB URL
    pruner: Literal["median", "successive_halving", "hyperband", "none"]
    pruner_startup_trials: Count
    pruner_warmup_epochs: Count
    heartbeat_seconds: PositiveInt  # database storages: a trial silent for 3 intervals is retried
    cuda_mps: Literal["auto", "off"]  # workers sharing a GPU: under a private CUDA MPS daemon (resources.py)
    max_epochs: PositiveInt
    # the best configurations trained again with each seed of replicates.seeds; the fit takes the best mean (0: off)
    reevaluate_top_k: Annotated[int, Field(ge=0, le=1000)]
    space: Annotated[dict[str, Any], Field(min_length=1)]

    @field_validator("storage")
    @classmethod
    def known_storage(cls, storage: str) -> str:
        if storage != "journal" and "://" not in storage:
            raise ValueError(f"'journal' or a database URL such as postgresql://user@host/db (got {storage!r})")
        return storage

    @model_validator(mode="after")
    def consistent(self) -> "SearchParams":
        dimensions = search_space.parse(self.space)
        if self.sampler == "grid":
            search_space.require_grid(dimensions)
        if self.storage.startswith("sqlite") and self.n_workers > 1:
            raise ValueError("SQLite cannot be shared by parallel workers; use n_workers: 1, 'journal' or PostgreSQL")
        return self

    def dimensions(self) -> dict[str, search_space.Dimension]:
        return search_space.parse(self.space)


Seeds = Annotated[list[Seed], Field(min_length=1, max_length=1000, json_schema_extra={"uniqueItems": True})]


class ReplicatesParams(Section):
    seeds: Seeds  # the fit and test once per seed
    n_workers: PositiveInt  # replicate fits at once, each on its share of the cores (GPUs round-robin)

    @field_validator("seeds")
    @classmethod
    def distinct(cls, seeds: list[int]) -> list[int]:
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed twice; each replicate needs its own seed")
        return seeds


class ObserveParams(Section):
    log_every_n_steps: PositiveInt
    gradient_norms: bool
    histograms: bool
    device_stats: bool
    activations: bool
    probe_size: PositiveInt
    wandb: bool
    wandb_project: str


class AnalyzeParams(Section):
    layers: list[str]  # modules of the network (named as net.named_modules() names them); [] = its blocks


class ReportParams(Section):
    title: str
    mistakes_shown: PositiveInt


TUNABLE = {"model": ModelParams, "optim": OptimParams, "train": TrainParams}  # the sections search.space sets

# The keys of the train section that a search trial does not use: searching one would give identical trials,
# whose tie-break the fit would then apply as if it had been chosen.
IGNORED_BY_TRIALS = {
    "train.max_epochs": "a trial trains search.max_epochs epochs",
    "train.swa_epoch_start": "a trial does not average weights (the fit does)",
    "train.devices": "a trial trains on one device",
    "train.num_nodes": "a trial trains on one device",
    "train.strategy": "a trial trains on one device",
    "train.data_path": "a search worker loads the data once, for all its trials",
    "train.resident_max_mb": "a search worker loads the data once, for all its trials",
}


class Params(Section):
    seed: Seed
    data: DataParams
    model: ModelParams
    optim: OptimParams
    train: TrainParams
    sanity: SanityParams
    lr_find: LrFindParams
    search: SearchParams
    replicates: ReplicatesParams
    observe: ObserveParams
    analyze: AnalyzeParams
    report: ReportParams

    def override(self, values: dict[str, Any]) -> "Params":
        """A copy with dotted keys ("optim.lr") replaced, validated like params.yaml itself."""
        tree = self.model_dump()
        for dotted, value in values.items():
            *parents, leaf = dotted.split(".")
            node = tree
            for key in parents:
                node = node.setdefault(key, {})  # an unknown section fails validation, naming it
                if not isinstance(node, dict):
                    raise ConfigError(f"{dotted}: {key} is a value, not a section")
            node[leaf] = value
        try:
            return Params.model_validate(tree)
        except ValidationError as error:
            raise ConfigError(describe(error)) from None

    @model_validator(mode="after")
    def freezing_has_weights(self) -> "Params":
        if self.train.freeze_epochs and self.model.weights is None:
            raise ValueError("train.freeze_epochs trains the head on model.weights, and model.weights is null")
        return self

    @model_validator(mode="after")
    def space_is_valid(self) -> "Params":
        # A search key must name a tunable param and each value must pass that param's own
        # validation, so a typo in the space fails now rather than in trial 7.
        for dotted, dimension in self.search.dimensions().items():
            section, _, field = dotted.partition(".")
            # model.kwargs.<network>.<argument>: any argument; the network's constructor checks it when a stage
            # starts (models/zoo.py).
            network, _, argument = dotted.removeprefix(search_space.ARGUMENTS).partition(".")
            if not (search_space.network_of(dotted) and network.isidentifier() and argument.isidentifier()):
                argument = ""
            if section not in TUNABLE or (field not in TUNABLE[section].model_fields and not argument):
                allowed = ", ".join(
                    f"{s}.<{'|'.join(f for f in m.model_fields if f'{s}.{f}' not in IGNORED_BY_TRIALS)}>"
                    for s, m in TUNABLE.items()
                )
                raise ValueError(
                    f"search.space: unknown key {dotted!r}; allowed: {allowed}, model.kwargs.<network>.<argument>"
                )
            if dotted in IGNORED_BY_TRIALS:
                raise ValueError(
                    f"search.space: {dotted} cannot be searched: {IGNORED_BY_TRIALS[dotted]}, so every trial would "
                    "train the same; set it in params.yaml"
                )
            if dotted in ONLY_WITH:
                setting, needed = ONLY_WITH[dotted]
                value = getattr(self.optim, setting.removeprefix("optim."))
                if value != needed and setting not in self.search.space:
                    raise ValueError(
                        f"search.space: {dotted} takes effect with {setting}: {needed} only ({setting} is {value}), "
                        "so every trial would train the same"
                    )
            current = getattr(self, section).model_dump()
            for value in search_space.endpoints(dimension):
                changed = (
                    {"kwargs": {**current["kwargs"], network: {**current["kwargs"].get(network, {}), argument: value}}}
                    if argument
                    else {field: value}
                )
                try:
                    TUNABLE[section].model_validate({**current, **changed})
                except ValidationError as error:
                    detail = error.errors()[0]["msg"]
                    raise ValueError(f"search.space.{dotted}: value {value!r}: {detail}") from None
        return self


def dotted(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys and their values, as DVC shows params (`model.kwargs.mlp.width`); a list is one value."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(dotted(value, f"{prefix}{key}."))
    return flat


def load_params(path: Path | str = "params.yaml") -> Params:
    """Read and validate params.yaml; raise ConfigError with a one-line message on any problem."""
    path = Path(path)
    try:
        raw = read_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run litpipe from the repository root)") from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise ConfigError(f"{path}: not a text file") from None
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = f" ({error.problem})" if getattr(error, "problem", None) else ""
        raise ConfigError(f"{path}:{where}: not valid YAML{problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: empty; expected the sections {', '.join(Params.model_fields)}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level (got {type(raw).__name__})")
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{path}: {describe(error)}") from None


def describe(error: ValidationError) -> str:
    """The first validation problem as 'key: what is allowed (got value)'; an unknown key first, since a
    misspelt key is also a missing one."""
    first = min(error.errors(), key=lambda problem: problem["type"] != "extra_forbidden")
    key = ".".join(str(part) for part in first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        section = _section_model(first["loc"][:-1])
        allowed = list(section.model_fields) if section else []
        close = difflib.get_close_matches(str(first["loc"][-1]), allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        message = f"{key}: unknown key{hint}; allowed: {', '.join(allowed) or 'see params.yaml'}"
    elif kind == "missing":
        message = f"{key}: missing"
    elif kind == "value_error":
        reason = first["msg"].removeprefix("Value error, ")
        message = f"{key}: {reason}" if key else reason
    else:
        message = f"{key}: {first['msg'][0].lower()}{first['msg'][1:]} (got {first.get('input')!r})"
    more = len(error.errors()) - 1
    return message + (f" (+{more} more problem{'s' if more > 1 else ''})" if more else "")


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model
