"""search.space: what each entry means, the grid it spans, and how a trial samples it.

    model.kwargs.mlp.width: [128, 512]                  categorical (every sampler; the grid's axes)
    model.kwargs.mlp.dropout: {low: 0.0, high: 0.5}     float range (random, tpe); `step` allowed
    model.kwargs.mlp.depth: {low: 1, high: 3}           int range when both ends are integers
    optim.lr: {low: 1.0e-4, high: 0.1, log: true}
    optim.lr: {lr_find: [0.3, 1, 3]}                    multiples of the lr_find stage's suggestion

A network's argument (model.kwargs.<network>.<argument>) is searched in the trials that train that network
only: with `model.arch: [mlp, cnn]` in the space too, the grid is mlp with each of the mlp's points plus cnn
with each of the cnn's, and a search whose network has no dimension of its own searches the others alone.

Kept free of Optuna imports: params validation uses it.
"""

import itertools
import math
from dataclasses import dataclass
from typing import Any

Scalar = bool | int | float | str


@dataclass(frozen=True)
class Categorical:
    values: tuple[Scalar, ...]


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool
    step: float | None
    integer: bool


@dataclass(frozen=True)
class LrFindMultiples:
    multiples: tuple[float, ...]


Dimension = Categorical | Range | LrFindMultiples
RELATIVE_SUFFIX = "@lr_find"  # the Optuna param of optim.lr given as multiples: "optim.lr@lr_find"
ARGUMENTS = "model.kwargs."  # model.kwargs.<network>.<argument>


def network_key(arch: str) -> str:
    """The name a network's arguments go under in model.kwargs: its own (mlp, resnet18), or its class's for a
    researcher's module (nets/small.py:SmallResNet -> SmallResNet): a dotted path would break DVC's dotted keys."""
    return arch.rpartition(":")[2]


def network_of(key: str) -> str | None:
    """The network whose argument a search key sets (model.kwargs.mlp.width -> mlp); None for any other key."""
    return key.removeprefix(ARGUMENTS).partition(".")[0] if key.startswith(ARGUMENTS) else None


def applying(dimensions: dict[str, Dimension], arch: str) -> dict[str, Dimension]:
    """The dimensions a search of `arch` (model.arch when the space does not search it) varies: every one but
    the arguments of the networks it never trains. Empty: searching would train the same network every trial."""
    archs = endpoints(dimensions["model.arch"]) if "model.arch" in dimensions else (arch,)
    trained = {network_key(str(a)) for a in archs}
    return {key: d for key, d in dimensions.items() if network_of(key) in (None, *trained)}


def parse(space: dict[str, Any]) -> dict[str, Dimension]:
    return {key: parse_dimension(key, raw) for key, raw in space.items()}


def parse_dimension(key: str, raw: Any) -> Dimension:
    where = f"search.space.{key}"
    if isinstance(raw, list):
        if not raw or not all(isinstance(v, Scalar) and (_number(v) or not isinstance(v, float)) for v in raw):
            raise ValueError(f"{where}: a list needs at least one value, each a finite number, string or boolean")
        return Categorical(tuple(raw))
    if isinstance(raw, dict) and "lr_find" in raw:
        if set(raw) != {"lr_find"}:
            raise ValueError(f"{where}: unknown key {min(map(str, set(raw) - {'lr_find'}))!r} beside lr_find")
        multiples = raw["lr_find"]
        if key != "optim.lr":
            raise ValueError(f"{where}: lr_find multiples apply to optim.lr only")
        if not isinstance(multiples, list) or not multiples or not all(_positive(m) for m in multiples):
            raise ValueError(f"{where}.lr_find: a list of positive numbers, e.g. [0.3, 1, 3]")
        return LrFindMultiples(tuple(float(m) for m in multiples))
    if isinstance(raw, dict):
        unknown = sorted(map(str, set(raw) - {"low", "high", "log", "step"}))
        if unknown or not {"low", "high"} <= set(raw):
            problem = f"unknown key {unknown[0]!r}" if unknown else "a range needs low and high"
            raise ValueError(f"{where}: {problem}; a range is {{low, high[, log][, step]}}")
        low, high, log, step = raw["low"], raw["high"], raw.get("log", False), raw.get("step")
        if not (_number(low) and _number(high) and low < high):
            raise ValueError(f"{where}: low and high must be numbers with low < high (got {low!r}, {high!r})")
        if not isinstance(log, bool) or (log and low <= 0):
            raise ValueError(f"{where}: log must be true or false, and a log range needs low > 0")
        if step is not None and (not _positive(step) or log):
            raise ValueError(f"{where}: step must be a positive number, and cannot be combined with log")
        integer = all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high))
        if integer and step is not None and not isinstance(step, int):
            raise ValueError(f"{where}: an integer range needs an integer step (got {step!r})")
        return Range(low, high, log, step, integer)
    raise ValueError(
        f"{where}: expected a list of values, {{low, high[, log][, step]}} or {{lr_find: [multiples]}} (got {raw!r})"
    )


def grid(dimensions: dict[str, Dimension], arch: str) -> list[dict[str, Scalar]]:
    """Every combination, as Optuna param values, in a stable order; a network's arguments are combined with
    that network only (`arch` where the space does not search model.arch). Only lists and lr_find multiples."""
    points = []
    for point in _combinations(_shared(dimensions)):
        points += [{**point, **own} for own in _combinations(_arguments(dimensions, point.get("model.arch", arch)))]
    return points


def require_grid(dimensions: dict[str, Dimension]) -> None:
    """Raises ValueError, naming the key, where the grid sampler cannot use a dimension (a range)."""
    dict(_axes(dimensions))


def _combinations(dimensions: dict[str, Dimension]) -> list[dict[str, Scalar]]:
    axes = dict(_axes(dimensions))
    names = sorted(axes)
    return [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]


def _shared(dimensions: dict[str, Dimension]) -> dict[str, Dimension]:
    return {key: d for key, d in dimensions.items() if network_of(key) is None}


def _arguments(dimensions: dict[str, Dimension], arch: str) -> dict[str, Dimension]:
    return {key: d for key, d in dimensions.items() if network_of(key) == network_key(arch)}


def _axes(dimensions: dict[str, Dimension]):
    for key, dimension in dimensions.items():
        if isinstance(dimension, Categorical):
            yield key, dimension.values
        elif isinstance(dimension, LrFindMultiples):
            yield key + RELATIVE_SUFFIX, dimension.multiples
        else:
            raise ValueError(f"search.space.{key}: the grid sampler needs a list of values, not a range")


def uses_lr_find(dimensions: dict[str, Dimension]) -> bool:
    return any(isinstance(d, LrFindMultiples) for d in dimensions.values())


def suggest(trial, dimensions: dict[str, Dimension], lr_suggestion: float | None, arch: str) -> dict[str, Any]:
    """Sample one point through an Optuna trial; returns dotted param -> value to override. The network comes
    first, then its own arguments (`arch` where the space does not search model.arch)."""
    chosen = _suggest(trial, _shared(dimensions), lr_suggestion)
    return {**chosen, **_suggest(trial, _arguments(dimensions, chosen.get("model.arch", arch)), lr_suggestion)}


def _suggest(trial, dimensions: dict[str, Dimension], lr_suggestion: float | None) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    for key, dimension in dimensions.items():
        if isinstance(dimension, Categorical):
            chosen[key] = trial.suggest_categorical(key, list(dimension.values))
        elif isinstance(dimension, LrFindMultiples):
            multiple = trial.suggest_categorical(key + RELATIVE_SUFFIX, list(dimension.multiples))
            chosen[key] = multiple * lr_suggestion
        elif dimension.integer:
            chosen[key] = trial.suggest_int(
                key, dimension.low, dimension.high, step=dimension.step or 1, log=dimension.log
            )
        else:
            chosen[key] = trial.suggest_float(
                key, dimension.low, dimension.high, step=dimension.step, log=dimension.log
            )
    return chosen


def endpoints(dimension: Dimension) -> tuple[Scalar, ...]:
    """The values to check against the param's own validation."""
    if isinstance(dimension, Categorical):
        return dimension.values
    if isinstance(dimension, Range):
        return (dimension.low, dimension.high)
    return ()  # multiples of a suggestion: checked when the trial resolves them


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0
