"""Every network `model.arch` can name, built from `model.kwargs` and checked before any work.

- litpipe's own: `mlp`, `cnn` (litpipe.models.networks);
- torchvision's classification models by name (`resnet18`, `convnext_tiny`, ...), adapted to the data:
  the first convolution takes the images' channels, the head the class count, and images under 64
  pixels get a small stem (3x3 stride-1 first convolution, no max-pool) unless `model.stem` says
  otherwise;
- a researcher's own `torch.nn.Module`, as `package.module:Class` or `path/to/file.py:Class`, resolved
  from the repository root (where litpipe runs).

A constructor gets its arguments from `model.kwargs.<its name>` (a class's name for your own: `SmallResNet`),
plus `input_shape` and `num_classes` when it takes them; the arguments are checked against its signature,
and the built network's forward against a probe batch, so that a typo or a wrong head is one line before
training rather than a traceback in epoch 1.
"""

import difflib
import functools
import importlib
import importlib.util
import inspect
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ConfigDict, TypeAdapter, ValidationError
from torch import nn

from litpipe.config import WEIGHT_SUFFIXES
from litpipe.errors import ConfigError
from litpipe.models import sources
from litpipe.models.networks import NETWORKS
from litpipe.search import space as search_space

if TYPE_CHECKING:
    from litpipe.config import Params

PROVIDED = ("input_shape", "num_classes")  # what litpipe passes itself, from the prepared data
PACKAGE = Path(__file__).resolve().parents[1]  # src/litpipe
SMALL_IMAGE = 64  # pixels: below this side, torchvision's stems would shrink the image to nothing


def is_own(arch: str) -> bool:
    """A researcher's module (`x.y:Class`, `x/y.py:Class`) rather than a network named by litpipe or torchvision."""
    return ":" in arch


def constructor(arch: str) -> Callable[..., nn.Module]:
    """The class or builder `arch` names; ConfigError (one line) if there is none."""
    if arch in NETWORKS:
        return NETWORKS[arch]
    if is_own(arch):
        return _own_class(arch)
    torchvision_models = _torchvision_names()
    if arch in torchvision_models:
        import torchvision

        return torchvision.models.get_model_builder(arch)
    close = difflib.get_close_matches(arch, [*NETWORKS, *torchvision_models], n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(
        f"model.arch: unknown network {arch!r}{hint}; litpipe's: {', '.join(NETWORKS)}; torchvision's: "
        f"{len(torchvision_models)} names such as resnet18 (torchvision.models.list_models()); or your own as "
        "package.module:Class or path/to/file.py:Class"
    )


def check_params(params: "Params") -> None:
    """Every network a stage may build from `params`: params.yaml's, and each arch and argument value that
    search.space offers (a typo or a value out of range in the space fails at the first stage, not in trial 7)."""
    archs, searched = [params.model.arch], {}
    if params.search.enabled:
        for key, dimension in params.search.dimensions().items():
            if key == "model.arch":
                archs += search_space.endpoints(dimension)
            elif network := search_space.network_of(key):
                argument = key.removeprefix(f"{search_space.ARGUMENTS}{network}.")
                searched.setdefault(network, {})[argument] = search_space.endpoints(dimension)
    for arch in dict.fromkeys(archs):
        network = search_space.network_key(arch)
        own = searched.get(network, {})
        values = {**params.model.kwargs.get(network, {}), **{key: ends[0] for key, ends in own.items()}}
        check(arch, values, params.model.stem)
        for key, ends in own.items():
            for value in ends[1:]:
                check(arch, {**values, key: value}, params.model.stem)
    if params.model.weights:  # a missing or unreadable file is one line now, not when the network is built
        from litpipe.models import weights  # Lightning: the stages that build networks import it anyway

        weights.state_dict(Path(params.model.weights))
    # DVC and Snakemake re-run a stage when a file among its deps changes: a network file dvc.yaml does not
    # list could be edited without effect, and the cache would serve results of the old network.
    untracked = sources.untracked_networks()
    if untracked:
        key = "model.weights" if all(name.endswith(WEIGHT_SUFFIXES) for name in untracked) else "model.arch"
        raise ConfigError(
            f"{key}: dvc.yaml does not list {', '.join(untracked)} among the deps of the stages that build "
            "the network, so editing it would re-run nothing; run `litpipe dag --write`"
        )


def check(arch: str, kwargs: dict[str, Any], stem: str = "auto") -> None:
    """Whether `arch` exists and `kwargs` fit its constructor: unknown or missing arguments are one line."""
    build = constructor(arch)
    if stem != "auto" and (arch in NETWORKS or is_own(arch)):
        raise ConfigError(f"model.stem: {stem!r} applies to torchvision's models, not to {arch}; set it to auto")
    name, accepted, required = _signature(arch, build)
    if accepted is None:
        return  # a constructor that takes **kwargs: its own checks speak when it is built
    where = f"model.kwargs.{search_space.network_key(arch)}"
    for key in kwargs:
        if key in PROVIDED:
            raise ConfigError(f"{where}.{key}: litpipe passes {key} itself, from the prepared data; remove it")
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            takes = ", ".join(accepted) or "no arguments"
            raise ConfigError(f"{where}.{key}: {name} has no argument {key!r}{hint}; it takes: {takes}")
    missing = [key for key in required if key not in kwargs]
    if missing:
        raise ConfigError(f"{where}: {name} needs {', '.join(missing)} (add them under {where})")
    _check_types(arch, build, kwargs)


def build(
    arch: str, kwargs: dict[str, Any], stem: str, input_shape: tuple[int, ...], num_classes: int
) -> nn.Module:
    """The network, adapted to the data and probed: its forward maps a batch of inputs to one logit per class."""
    check(arch, kwargs, stem)
    if len(input_shape) != 3 and not (arch == "mlp" or is_own(arch)):  # cnn and torchvision's take images
        raise ConfigError(
            f"model.arch: {arch} takes images (channels x height x width), and the prepared data is rows of "
            f"{math.prod(input_shape)} features; use mlp or your own network"
        )
    make = constructor(arch)
    if arch in NETWORKS or is_own(arch):
        offered = dict(zip(PROVIDED, (tuple(input_shape), num_classes), strict=True))
        takes = inspect.signature(make).parameters
        passes_all = any(p.kind is p.VAR_KEYWORD for p in takes.values())
        extra = {key: value for key, value in offered.items() if key in takes or passes_all}
        net = _construct(arch, make, {**kwargs, **extra})
    else:
        net = _construct(arch, make, {**_torchvision_defaults(arch, input_shape), **kwargs, "num_classes": num_classes})
        _adapt(net, channels=input_shape[0], small=_small_stem(arch, stem, input_shape))
    probe(net, arch, input_shape, num_classes)
    return net


def probe(net: nn.Module, arch: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    """A forward pass of two zero images, in eval mode (no random numbers drawn, no statistics updated)."""
    batch = torch.zeros(2, *input_shape)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(batch)
    except Exception as error:  # noqa: BLE001  (whatever the researcher's forward raises, as one line)
        first = str(error).splitlines()[0] if str(error) else ""
        raise ConfigError(
            f"model.arch: {arch}'s forward failed on a probe batch of shape {tuple(batch.shape)}: "
            f"{type(error).__name__}: {first}"
        ) from None
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"model.arch: {arch}'s forward returned {got} for a batch of 2 inputs of shape {tuple(input_shape)}; "
            f"expected logits of shape (2, {num_classes})"
        )


def blocks(net: nn.Module, names: Sequence[str] = ()) -> dict[str, nn.Module]:
    """The modules whose outputs activation analysis shows: those `names` names (as net.named_modules() names
    them), or by default litpipe's hidden blocks; the stages of a torchvision model's `features`; otherwise the
    network's top-level children that hold layers of their own (a ResNet's layer1..layer4, a researcher's stem
    and stages), or all of them when none does."""
    if names:
        modules = dict(net.named_modules())
        for name in names:
            if name not in modules or not name:
                close = difflib.get_close_matches(name, [m for m in modules if m], n=1)
                named = {id(module): qualified for qualified, module in modules.items()}
                default = ", ".join(named[id(block)] for block in blocks(net).values())
                hint = f"did you mean {close[0]}?" if close else f"its blocks are {default}"
                raise ConfigError(f"analyze.layers: {type(net).__name__} has no module {name!r} ({hint})")
        return {name: modules[name] for name in names}
    hidden = getattr(net, "hidden", None)
    if isinstance(hidden, nn.ModuleDict):
        return dict(hidden.items())
    features = getattr(net, "features", None)
    if isinstance(features, nn.Sequential):
        return {f"features.{name}": module for name, module in features.named_children()}
    children = dict(net.named_children())
    containers = {name: module for name, module in children.items() if next(module.children(), None) is not None}
    return containers or children


# --- a researcher's own module -------------------------------------------------------------------------


def _own_class(arch: str) -> type[nn.Module]:
    module_name, _, class_name = arch.partition(":")
    module = _import_own(module_name)
    if not hasattr(module, class_name):
        names = [n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)]
        close = difflib.get_close_matches(class_name, names, n=1)
        hint = f" (did you mean {close[0]}?)" if close else (f"; it defines {', '.join(names)}" if names else "")
        raise ConfigError(f"model.arch: {module_name} has no {class_name!r}{hint}")
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model.arch: {arch} is not a torch.nn.Module class (it is {type(cls).__name__})")
    return cls


def _import_own(module_name: str):
    root = str(Path.cwd())
    if root not in sys.path:
        sys.path.insert(0, root)  # the repository root, as `python -m` would see it
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"model.arch: {module_name}: no such file (paths are from the repository root)")
            name = ".".join(path.with_suffix("").parts)
            if name in sys.modules:
                return sys.modules[name]
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
            return module
        return importlib.import_module(module_name)
    except ConfigError:
        raise
    except ModuleNotFoundError as error:
        raise ConfigError(f"model.arch: cannot import {module_name}: {error}") from None
    except Exception as error:  # noqa: BLE001  (an error in the researcher's module, as one line)
        where = _where(error)
        raise ConfigError(
            f"model.arch: importing {module_name} failed{where}: {type(error).__name__}: {str(error).splitlines()[0]}"
        ) from None


def _where(error: BaseException) -> str:
    """' (file.py line N)': where in the researcher's code (not torch's, not litpipe's) an error arose."""
    if isinstance(error, SyntaxError) and error.filename:
        return f" ({Path(error.filename).name} line {error.lineno})"
    ours = [
        frame
        for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith(("<", sys.prefix, sys.base_prefix, str(PACKAGE)))
    ]
    return f" ({Path(ours[-1].filename).name} line {ours[-1].lineno})" if ours else ""


# --- torchvision ---------------------------------------------------------------------------------------


@functools.cache  # asked by every check and build: list_models walks torchvision's registry
def _torchvision_names() -> list[str]:
    import torchvision

    return torchvision.models.list_models(torchvision.models)


def _signature(arch: str, make: Callable) -> tuple[str, list[str] | None, list[str]]:
    """The constructor's name, the keyword arguments it accepts (None: any) and those it needs."""
    if arch in NETWORKS or is_own(arch):
        name, params = make.__name__, inspect.signature(make).parameters
    else:  # a builder passes its kwargs to the model class its return annotation names
        model_class = _model_class(arch)
        name = f"torchvision's {arch}"
        params = inspect.signature(model_class).parameters
        # The builder supplies the class's required arguments (a ResNet's block and layers): the rest are the choice.
        optional = [k for k, p in params.items() if p.default is not inspect.Parameter.empty]
        return name, [k for k in optional if k not in PROVIDED], []
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return name, None, []
    accepted = [k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [k for k in accepted if params[k].default is inspect.Parameter.empty and k not in PROVIDED]
    return name, [k for k in accepted if k not in PROVIDED], required


def _check_types(arch: str, make: Callable, kwargs: dict[str, Any]) -> None:
    """Each argument against its annotation, as params.yaml's own values are checked (strictly: 1e3 is not an
    int; ranges written as Annotated[int, Field(ge=1)] included). An annotation pydantic cannot check (a
    callable, a string under `from __future__ import annotations` it cannot resolve) is left to the constructor."""
    target = _model_class(arch) if arch not in NETWORKS and not is_own(arch) else make
    try:
        parameters = inspect.signature(target, eval_str=True).parameters
    except Exception:  # noqa: BLE001  (an annotation that does not evaluate: nothing to check against)
        return
    for key, value in kwargs.items():
        annotation = parameters[key].annotation if key in parameters else inspect.Parameter.empty
        if annotation is inspect.Parameter.empty:
            continue
        try:
            adapter = TypeAdapter(annotation, config=ConfigDict(strict=True, arbitrary_types_allowed=True))
        except Exception:  # noqa: BLE001  (pydantic has no schema for it)
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as error:
            problem = error.errors()[0]["msg"]
            where = f"model.kwargs.{search_space.network_key(arch)}.{key}"
            raise ConfigError(f"{where}: {problem[0].lower()}{problem[1:]} (got {value!r})") from None


def _torchvision_defaults(arch: str, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """What a torchvision model needs to know of the data beyond its class count: a vision transformer
    its image size."""
    model_class = _model_class(arch)
    return {"image_size": input_shape[-1]} if "image_size" in inspect.signature(model_class).parameters else {}


def _construct(arch: str, make: Callable, kwargs: dict[str, Any]) -> nn.Module:
    try:
        return make(**kwargs)
    except Exception as error:  # noqa: BLE001  (the constructor's own complaint, as one line)
        first = str(error).splitlines()[0] if str(error) else ""
        raise ConfigError(f"model: building {arch} failed{_where(error)}: {type(error).__name__}: {first}") from None


def _small_stem(arch: str, stem: str, input_shape: tuple[int, ...]) -> bool:
    """Whether to give the model a small stem: never to a transformer (its first convolution cuts the image
    into patches, the sequence it reads), else when asked or for small images."""
    if "patch_size" in inspect.signature(_model_class(arch)).parameters:
        return False
    return stem == "small" or (stem == "auto" and min(input_shape[1:]) < SMALL_IMAGE)


def _model_class(arch: str) -> type[nn.Module]:
    """The class a torchvision builder returns (its return annotation)."""
    return inspect.signature(constructor(arch)).return_annotation


def _adapt(net: nn.Module, channels: int, small: bool) -> None:
    """The first convolution to `channels` inputs (and, for small images, 3x3 with stride 1), and the
    max-pool right after it (ResNet's, DenseNet's) gone for small images."""
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Conv2d)]
    if not names:
        return
    first = net.get_submodule(names[0])
    if small or first.in_channels != channels:
        kernel, stride, padding = ((3, 3), (1, 1), (1, 1)) if small else (first.kernel_size, first.stride, first.padding)
        replacement = nn.Conv2d(
            channels, first.out_channels, kernel, stride, padding, bias=first.bias is not None
        )
        _replace(net, names[0], replacement)
    if small:
        for name, module in net.named_modules():
            if isinstance(module, nn.Conv2d) and name != names[0]:
                break  # only a pool in the stem, before the second convolution
            if isinstance(module, nn.MaxPool2d):
                _replace(net, name, nn.Identity())
                break


def _replace(net: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)
