"""docs/configuration.md, generated from the settings model so the reference cannot drift from the code.

Each setting's meaning is its ``#:`` comment in ``config.py``: the comment lines right above a field (they
describe every field of the run of consecutive fields below them) and a ``#:`` comment at the end of the
field's line (a unit, or ``default: ...`` for a default computed at start). ``# --- title`` lines make the
sections. Name, type, default and bounds come from ``Settings.model_fields``; a secret's default is never
printed.
"""

from __future__ import annotations

import ast
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from ultra_tasks.config import Settings, is_secret_field

#: where the generated page lives, relative to the repository root
DOC_PATH = Path("docs") / "configuration.md"
REGENERATE = "python scripts/gen_config_doc.py"

_HEADER = f"""\
# Configuration

<!-- Generated from ultra_tasks/config.py by `{REGENERATE}`; do not edit by hand. -->

Every setting is an environment variable (or a line of a `.env` file in the working directory); names are
matched case-insensitively. A malformed value stops start-up with a message naming the variable, e.g.
`invalid configuration: RETRY_MAX_ATTEMPTS='abc': Input should be a valid integer`, so a bad deploy fails
before the first job. `ultra config` validates the environment and prints every setting, secrets masked.

Secrets (names ending in `_KEY`, `_TOKEN`, `_SECRET`, `_PASSWORD`, `_AUTH`, and `MODE_WEBHOOK_URL`) are
never printed, here or by `ultra config`; [security.md](security.md) says what each protects.

To change this page, change the `#:` comment above the setting in `ultra_tasks/config.py` and run
`{REGENERATE}`; `tests/unit/test_config_doc.py` fails while the two disagree.
"""


@dataclass(frozen=True)
class Comments:
    """The ``#:`` text around one field and the section it sits in."""

    section: str
    above: str
    trailing: str


@dataclass(frozen=True)
class Row:
    section: str
    variable: str
    type: str
    default: str
    bounds: str
    meaning: str


def field_comments(cls: type = Settings) -> dict[str, Comments]:
    """Each field's ``#:`` comments, read from the class's source."""
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    by_line: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            by_line[tok.start[0]] = tok.string
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    out: dict[str, Comments] = {}
    section, above, previous_end = "", "", 0
    for node in body.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            previous_end = node.end_lineno or node.lineno
            continue
        block: list[str] = []
        line = node.lineno - 1  # 1-based line above the field
        while line > previous_end and lines[line - 1].strip().startswith("#:"):
            block.insert(0, lines[line - 1].strip()[2:].strip())
            line -= 1
        for between in range(previous_end + 1, node.lineno):
            text = lines[between - 1].strip()
            if text.startswith("# ---"):
                section = text.removeprefix("# ---").strip()
        # a comment block describes the run of consecutive fields below it; a blank line ends the run
        if block:
            above = " ".join(block)
        elif previous_end != node.lineno - 1 or not isinstance(_previous(body, node), ast.AnnAssign):
            above = ""
        trailing = ""
        for n in range(node.lineno, (node.end_lineno or node.lineno) + 1):
            comment = by_line.get(n, "")
            if comment.startswith("#:"):
                trailing = comment[2:].strip()
        out[node.target.id] = Comments(section, above, trailing)
        previous_end = node.end_lineno or node.lineno
    return out


def _previous(body: ast.ClassDef, node: ast.stmt) -> ast.stmt | None:
    index = body.body.index(node)
    return body.body[index - 1] if index else None


def env_name(name: str, field: FieldInfo, cls: type[Settings] = Settings) -> str:
    """The environment variable a field is read from."""
    alias = field.validation_alias if isinstance(field.validation_alias, str) else field.alias
    if alias:
        return alias.upper()
    prefix = str(cls.model_config.get("env_prefix") or "")
    return f"{prefix}{name}".upper()


def type_name(annotation: Any) -> str:
    """A reader's name for a field's type (how the variable is written)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = [type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(kinds)
    if origin is list:
        return "comma-separated list"
    if origin is dict:
        return "JSON object"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "name=value pairs"
    names = {int: "integer", float: "number", bool: "boolean", str: "string", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_text(name: str, field: FieldInfo, trailing: str) -> str:
    if trailing.lower().startswith("default"):
        return trailing.split(None, 1)[1].removeprefix(":").strip() if " " in trailing else trailing
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "(required)"
    else:
        value = field.default
    if is_secret_field(name):
        return "(unset)" if value is None else "(a development value; masked)"
    return _format(value)


def _format(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, float):
        return f"`{_number(value)}`"
    if isinstance(value, Path) and not value.is_absolute():
        return f"`./{value}`"
    if isinstance(value, list):
        return f"`{','.join(map(str, value))}`" if value else "(empty)"
    if isinstance(value, dict):
        return f"`{value}`" if value else "`{}`"
    return f"`{value}`"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def bounds_text(field: FieldInfo) -> str:
    parts: list[str] = []
    for item in field.metadata:
        for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(item, getattr(annotated_types, attr.capitalize())):
                parts.append(f"{sign} {_number(getattr(item, attr))}")
        if isinstance(item, annotated_types.MinLen):
            parts.append(f"at least {item.min_length} characters")
        pattern = getattr(item, "pattern", None)
        if pattern:
            parts.append(_pattern_text(str(pattern)))
    return ", ".join(parts)


def _pattern_text(pattern: str) -> str:
    choices = re.fullmatch(r"\^(?:\(\?i:)?\(?([A-Za-z0-9_|.-]+)\)?\)?\$", pattern)
    if choices and "|" in choices.group(1):
        return "one of " + ", ".join(f"`{c}`" for c in choices.group(1).split("|"))
    return f"matches `{pattern}`".replace("|", "\\|")


def rows(cls: type[Settings] = Settings) -> list[Row]:
    comments = field_comments(cls)
    out = []
    for name, field in cls.model_fields.items():
        c = comments.get(name, Comments("", "", ""))
        trailing = "" if c.trailing.lower().startswith("default") else c.trailing
        meaning = " ".join(p for p in (c.above, f"({trailing})" if trailing and c.above else trailing) if p)
        out.append(
            Row(
                section=c.section,
                variable=env_name(name, field, cls),
                type=type_name(field.annotation),
                default=default_text(name, field, c.trailing),
                bounds=bounds_text(field),
                meaning=meaning,
            )
        )
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(cls: type[Settings] = Settings) -> str:
    """The whole page, as written to docs/configuration.md."""
    out = [_HEADER.rstrip("\n")]
    section = None
    for row in rows(cls):
        if row.section != section:
            section = row.section
            out.append(f"\n## {section[:1].upper() + section[1:] if section else 'Other'}\n")
            out.append("| variable | type | default | bounds | meaning |")
            out.append("|---|---|---|---|---|")
        out.append(
            f"| `{row.variable}` | {row.type} | {_cell(row.default)} | {row.bounds} | {_cell(row.meaning)} |"
        )
    return "\n".join(out) + "\n"
