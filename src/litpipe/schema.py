"""params.schema.json: the JSON Schema of params.yaml, generated from the models of config.py (`litpipe schema`).

params.yaml names it on its first line for the YAML language server, so an editor completes its keys, shows
the comment beside each field of config.py, and flags an unknown or missing key, a wrong type, a value out of
range and a search.space entry that is none of the key's values. The models stay the authority: litpipe
validates with them, and they check what a schema cannot (tests/test_schema.py lists what). Draft-07, the
draft editors support; `--check` exits 1 where the file is not what the models give.
"""

import argparse
import inspect
import io
import json
import re
import sys
import tokenize
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema

from litpipe import paths
from litpipe.config import IDENTIFIER, IGNORED_BY_TRIALS, TUNABLE, Params
from litpipe.search import space as search_space

SCHEMA_FILE = Path("params.schema.json")
DEFINITIONS = "#/definitions/"
FINITE = 1.7976931348623157e308  # the largest double: a bound JSON Schema can state, and `.inf` exceeds
ARGUMENT_KEY = f"^{re.escape(search_space.ARGUMENTS)}{IDENTIFIER[1:-1]}\\.{IDENTIFIER[1:-1]}$"


class FiniteFloats(GenerateJsonSchema):
    """Pydantic's schema with every float finite, as Section's allow_inf_nan=False makes them, and no field
    titles (each the key's own name, title-cased)."""

    def float_schema(self, schema: Any) -> dict[str, Any]:
        json_schema = super().float_schema(schema)
        if "maximum" not in json_schema and "exclusiveMaximum" not in json_schema:
            json_schema["maximum"] = FINITE
        if "minimum" not in json_schema and "exclusiveMinimum" not in json_schema:
            json_schema["minimum"] = -FINITE
        return json_schema

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def schema() -> dict[str, Any]:
    """The JSON Schema of params.yaml."""
    generated = Params.model_json_schema(ref_template=DEFINITIONS + "{model}", schema_generator=FiniteFloats)
    definitions = generated.pop("$defs")
    for model in [Params, *(field.annotation for field in Params.model_fields.values())]:
        if isinstance(model, type) and issubclass(model, BaseModel):
            properties = (definitions.get(model.__name__) or generated)["properties"]
            for name, comment in field_comments(model).items():
                properties[name]["description"] = comment
    definitions["SearchParams"]["properties"]["space"] = space_schema(definitions)
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        **generated,
        "title": "litpipe params.yaml",
        "description": "Generated from src/litpipe/config.py by `litpipe schema`; litpipe validates with those models.",
        "definitions": definitions,
    }


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment beside each field of a model's class (or else the comment lines just above it): its
    description in the schema."""
    source = inspect.getsource(model)
    comments = {
        token.start[0]: re.sub(r"\bNone\b", "null", token.string.lstrip("#").strip())  # as YAML writes it
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    }
    lines = source.splitlines()
    found = {}
    for number, line in enumerate(lines, 1):
        field = re.match(r" {4}(\w+):", line)
        if not (field and field[1] in model.model_fields):
            continue
        above = number - 1
        while above in comments and lines[above - 1].lstrip().startswith("#"):
            above -= 1
        description = comments.get(number) or " ".join(comments[row] for row in range(above + 1, number))
        if description:
            found[field[1]] = description
    return found


def space_schema(definitions: dict[str, Any]) -> dict[str, Any]:
    """search.space as search/space.py reads it: keys a trial uses, each entry of values the key itself takes.
    Adds the shapes of an entry to the definitions."""
    finite = {"type": "number", "minimum": -FINITE, "maximum": FINITE}
    positive = {"type": "number", "exclusiveMinimum": 0, "maximum": FINITE}
    definitions["Values"] = {
        "description": "a list of values (every sampler; the grid's axes)",
        "type": "array",
        "minItems": 1,
        "items": {"anyOf": [{"type": ["string", "boolean"]}, finite]},
    }
    definitions["Range"] = {
        "description": "{low, high[, log][, step]}: random and tpe; integers when both ends are",
        "type": "object",
        "properties": {"low": finite, "high": finite, "log": {"type": "boolean"}, "step": positive},
        "required": ["low", "high"],
        "additionalProperties": False,
    }
    definitions["LrFindMultiples"] = {
        "description": "{lr_find: [multiples]}: multiples of the lr_find stage's suggestion",
        "type": "object",
        "properties": {"lr_find": {"type": "array", "minItems": 1, "items": positive}},
        "required": ["lr_find"],
        "additionalProperties": False,
    }
    keys = {
        f"{section}.{field}": dimension(
            f"{DEFINITIONS}{model.__name__}/properties/{field}", numeric(own), field == "lr"
        )
        for section, model in TUNABLE.items()
        for field, own in definitions[model.__name__]["properties"].items()
        if f"{section}.{field}" not in IGNORED_BY_TRIALS
    }
    return {
        "description": "dotted param -> [values] | {low, high[, log][, step]} | {lr_find: [multiples]} (docs/search.md)",
        "type": "object",
        "minProperties": 1,
        "properties": keys,
        "patternProperties": {ARGUMENT_KEY: dimension(None, ranges=True)},
        "additionalProperties": False,
    }


def dimension(reference: str | None, ranges: bool, lr_find: bool = False) -> dict[str, Any]:
    """One search.space entry for a key whose own schema is at `reference` (None: any value): a list of its
    values, a range between two of them where it takes numbers, or (optim.lr) multiples of lr_find's suggestion."""
    values, ranged = {"$ref": DEFINITIONS + "Values"}, {"$ref": DEFINITIONS + "Range"}
    if reference:
        values = {"allOf": [values, {"items": {"$ref": reference}}]}
        ranged = {"allOf": [ranged, {"properties": {"low": {"$ref": reference}, "high": {"$ref": reference}}}]}
    forms = [values, *([ranged] if ranges else []), *([{"$ref": DEFINITIONS + "LrFindMultiples"}] if lr_find else [])]
    return {"anyOf": forms}


def numeric(own: dict[str, Any]) -> bool:
    """Whether a field's schema takes numbers."""
    kinds = [own.get("type"), *(form.get("type") for form in own.get("anyOf", []))]
    return any(kind in ("number", "integer") for kind in kinds)


def text() -> str:
    """The schema as params.schema.json holds it: indented, in the models' order, ending in a newline."""
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def write(path: Path = SCHEMA_FILE) -> bool:
    """Write the schema to `path`; False where it was current."""
    new = text()
    if path.is_file() and path.read_text() == new:
        return False
    path.write_text(new)
    return True


def main(args: argparse.Namespace) -> int:
    """`litpipe schema`: write params.schema.json; --check: exit 1 where it is not what the models give."""
    if not paths.PARAMS.is_file():
        print(f"litpipe: schema: no {paths.PARAMS} here; run it from the repository root", file=sys.stderr)
        return 2
    if args.check:
        if SCHEMA_FILE.is_file() and SCHEMA_FILE.read_text() == text():
            return 0
        print(
            f"litpipe: schema: {SCHEMA_FILE} is not what src/litpipe/config.py gives; run `litpipe schema` to write it",
            file=sys.stderr,
        )
        return 1
    print(f"{SCHEMA_FILE}: {'written' if write() else 'current'}")
    return 0
