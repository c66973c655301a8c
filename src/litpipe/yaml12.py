"""YAML as DVC reads params.yaml: the YAML 1.2 core schema, and a key written twice refused.

Two readers that disagree on what a value is would track one number and train with another: DVC (ruamel)
reads YAML 1.2, where only true/false are booleans, `1e-3` is a float, `017` is seventeen and dates stay
strings; PyYAML's own loader reads YAML 1.1. And where PyYAML keeps the last of two equal keys silently,
this reader names the key.
"""

import re
from typing import Any

import yaml

from litpipe.errors import ConfigError


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's core schema."""


ParamsLoader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag.rsplit(":", 1)[-1] not in ("bool", "int", "float", "timestamp")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)


def _construct_int(loader: ParamsLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    return int(text, {"0x": 16, "0o": 8}.get(text[:2], 10))


ParamsLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def read_yaml(text: str) -> Any:
    """The document in `text`, read as ParamsLoader reads it; a key written twice in one mapping is a
    ConfigError naming it (PyYAML would keep the last one silently)."""
    loader = ParamsLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(node: yaml.Node, where: str = "") -> None:
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(item, where)
    if not isinstance(node, yaml.MappingNode):
        return
    first_line: dict[str, int] = {}
    for key_node, value_node in node.value:
        key = f"{where}.{key_node.value}" if where else str(key_node.value)
        line = key_node.start_mark.line + 1
        if key in first_line:
            raise ConfigError(f"line {line}: {key} is written twice (first on line {first_line[key]}); keep one")
        first_line[key] = line
        _refuse_duplicate_keys(value_node, key)
