"""The one reader of every YAML and JSON document a user hands the CLI: bounded, and strict about keys.

`yaml.safe_load` and `json.loads` run no code, but they trust the size of what they read: a
"billion laughs" alias bomb of a few hundred bytes expands to 10^9 nodes in whatever walks it
next, 100,000 nested `[` crash the recursive composer with a RecursionError, and a key given
twice silently keeps its last value. Sweep files, run configs, `data.yaml` and source manifests
therefore all go through these functions, which refuse, with a one-line `SchemaError` naming the
file (and the line where one is known):

- **size**: more than `MAX_BYTES` (16 MiB) of text; a caller that legitimately reads more (the
  manifest of a source with a million shards) passes `max_bytes`;
- **expanded size**: a YAML stream of more than `MAX_NODES` (100,000) nodes once every alias is
  counted with the full size of what it refers to. Counted without expanding anything: one pass
  over the parser's events, as they come, records the expanded size of every anchored node and adds
  it at each alias, so an alias bomb is refused after a few hundred events. An alias to a
  collection that is still open (a recursive document, which nothing downstream could walk) is
  refused too. JSON has no aliases: its size bounds its nodes;
- **depth**: collections nested more than `MAX_DEPTH` (64) levels, checked on the events before
  the composer (which recurses) descends, and for JSON by a non-recursive scan before `json`
  (which recurses) runs;
- **duplicate keys**, at any depth, naming the key and both lines
  (`sweep.yaml:14: key 'lr' is given twice (first at line 9)`). YAML merge keys (`<<: *base`)
  may still be overridden: only keys written in the mapping itself count.

libyaml parses when it is installed (the pure-Python parser otherwise; `libyaml=False` forces it,
and the tests compare the two). The composer and the constructor are PyYAML's Python ones in both
cases, so the checks above are one implementation. PyYAML is imported inside the functions, as
everywhere in this layer: `sphinxx --help` does not pay for it.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from .fields import SchemaError

MAX_BYTES = 16 * 2**20  # a sweep file or run config is a few KB; 16 MiB is far beyond any real one
MAX_NODES = 100_000  # expanded YAML nodes; the largest real sweep has a few hundred
MAX_DEPTH = 64  # nested collections; real configs nest 4 or 5 levels

# libyaml >= 0.2.5 refuses 1000 levels itself, while its scanner looks up to 1024 characters ahead
# for a key, before the first event reaches `_Budget`: the same rule, told in the same words.
LIBYAML_TOO_DEEP = "exceeded maximum nesting depth"
_MERGE_TAGS = ("tag:yaml.org,2002:merge", "tag:yaml.org,2002:value")  # keys that are not keys
# A JSON string (escapes included), then optionally the colon that makes it an object key; or a bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"(\s*:)?|[\[\]{}]')
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def read_document(path: str | Path, what: str = "file", max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a local file, read no further than `max_bytes` + 1 (a 10 GB file, or /dev/zero,
    is refused, not read); `what` names it in the error (`cannot read sweep file x.yaml: ...`)."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise SchemaError("", f"cannot read {what} {path}: {err.strerror or err}") from None
    _check_size(data, str(path), max_bytes)
    return data


def read_yaml_file(path: str | Path, what: str = "file", max_bytes: int = MAX_BYTES) -> Any:
    """The one YAML document of a local file (None when it is empty), checked as `load_yaml` checks."""
    return load_yaml(read_document(path, what, max_bytes), str(path), max_bytes=max_bytes)


def load_yaml(
    text: str | bytes,
    where: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_nodes: int = MAX_NODES,
    libyaml: bool = True,
) -> Any:
    """The one YAML document of `text` (None when there is none); `where` names it in errors.

    Refused with a `SchemaError`: invalid YAML, more than one document, and every rule of the
    module docstring.
    """
    return _load(text, where, max_bytes, max_nodes, libyaml, single=True)[0]


def load_yaml_all(
    text: str | bytes,
    where: str,
    *,
    max_bytes: int = MAX_BYTES,
    max_nodes: int = MAX_NODES,
    libyaml: bool = True,
) -> list[Any]:
    """Every YAML document of `text` (a `---`-separated stream), as `load_yaml` checks one; the
    node budget is the whole stream's."""
    return _load(text, where, max_bytes, max_nodes, libyaml, single=False)


def load_json(text: str | bytes, where: str, *, max_bytes: int = MAX_BYTES) -> Any:
    """The JSON value of `text`; `where` names it in errors. Refused with a `SchemaError`: invalid
    JSON, more than `max_bytes`, nesting deeper than `MAX_DEPTH`, a key given twice in an object."""
    _check_size(text, where, max_bytes)
    if isinstance(text, bytes):
        try:
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        except UnicodeDecodeError as err:
            raise SchemaError("", f"{where} is not valid JSON: {err}") from None
    deep = _json_too_deep(text, MAX_DEPTH)
    if deep is not None:
        raise SchemaError("", f"{where}:{deep}: nested deeper than {MAX_DEPTH} levels; refused")
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as dup:
        raise SchemaError("", _json_duplicate(text, where, dup.key)) from None
    except json.JSONDecodeError as err:
        raise SchemaError(
            "", f"{where} is not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}"
        ) from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise SchemaError("", f"{where} is not valid JSON: {err}") from None


# ------------------------------------------------------------------------------ size


def _check_size(text: str | bytes, where: str, max_bytes: int) -> None:
    size = len(text) if isinstance(text, bytes) or text.isascii() else len(text.encode(errors="replace"))
    if size > max_bytes:
        raise SchemaError("", f"{where} is larger than {max_bytes:,} bytes; refused")


# ------------------------------------------------------------------------------ YAML


def _load(
    text: str | bytes, where: str, max_bytes: int, max_nodes: int, libyaml: bool, single: bool
) -> list[Any]:
    import yaml  # lazily: see the module docstring

    _check_size(text, where, max_bytes)
    try:
        return _compose(text, _Budget(where, max_nodes, MAX_DEPTH), libyaml, single)
    except yaml.YAMLError as err:
        raise SchemaError("", _yaml_error(err, where)) from None
    except SchemaError:
        raise
    except ValueError as err:  # a constructor's own, e.g. a date of month 13
        raise SchemaError("", f"{where} is not valid YAML: {err}") from None


def _compose(text: str | bytes, budget: _Budget, libyaml: bool, single: bool) -> list[Any]:
    """The documents of `text`, every parser event seen by `budget` before the composer uses it."""
    loader = _loader_class(libyaml)(text)
    loader.budget = budget
    try:
        if single:
            return [loader.get_single_data()]
        documents = []
        while loader.check_data():
            documents.append(loader.get_data())
        return documents
    finally:
        loader.dispose()


def _yaml_error(err: Exception, where: str) -> str:
    """`x.yaml is not valid YAML (line 3, column 7): <the parser's problem>`."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark and problem == LIBYAML_TOO_DEEP:
        return f"{where}:{mark.line + 1}: nested deeper than {MAX_DEPTH} levels; refused"
    line = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return f"{where} is not valid YAML{line}: {problem}"


@functools.cache
def _loader_class(libyaml: bool) -> Any:
    """A SafeLoader that counts every event on `_Budget` and refuses duplicate keys; libyaml's
    parser under PyYAML's Python composer when `libyaml` and it is installed."""
    import yaml
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.nodes import ScalarNode
    from yaml.resolver import Resolver

    class Checked:
        budget: _Budget

        def get_event(self) -> Any:
            event = super().get_event()  # type: ignore[misc]  # the parser's, next in the MRO
            self.budget.see(event)
            return event

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, ScalarNode) or key_node.tag in _MERGE_TAGS:
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1  # type: ignore[attr-defined]
                if key in seen:
                    raise SchemaError(
                        "",
                        f"{self.budget.where}:{line}: key {key!r} is given twice (first at line {seen[key]})",
                    )
                seen[key] = line
            return super().construct_mapping(node, deep=deep)  # type: ignore[misc]

    try:
        from yaml._yaml import CParser as parser  # libyaml, when PyYAML was built with it
    except ImportError:
        libyaml = False
    if not libyaml:
        return type("CheckedLoader", (Checked, yaml.SafeLoader), {})

    def init(self: Any, stream: str | bytes) -> None:
        parser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)

    # Composer before CParser: its Python composition (which asks get_event, so every event is
    # counted) replaces libyaml's, which would compose a whole document before any check.
    return type("CheckedCLoader", (Checked, Composer, parser, SafeConstructor, Resolver), {"__init__": init})


class _Budget:
    """The expanded size and the depth of a YAML stream, counted on its parser events as they come.

    Every node written in the text counts 1, and an alias counts the expanded size of the node its
    anchor names (recorded when that node ends), so the total is the size of the fully expanded
    stream without expanding it.
    """

    def __init__(self, where: str, max_nodes: int, max_depth: int):
        self.where, self.max_nodes, self.max_depth = where, max_nodes, max_depth
        self.total = 0
        self.open: list[list[Any]] = []  # [anchor, expanded size so far] of each open collection
        self.sizes: dict[str, int] = {}  # anchor -> expanded size of its (ended) node

    def see(self, event: Any) -> None:
        """Count one event; refuse (SchemaError) when the stream grows past a bound."""
        from yaml import events

        if isinstance(event, events.DocumentStartEvent):
            self.sizes = {}  # anchors belong to one document
        elif isinstance(event, events.CollectionStartEvent):
            if len(self.open) >= self.max_depth:
                self._refuse(event, f"nested deeper than {self.max_depth} levels")
            self._count(event, 1)
            self.open.append([event.anchor, 1])  # the collection's own node; its parent adds it at its end
        elif isinstance(event, events.CollectionEndEvent):
            anchor, size = self.open.pop()
            if anchor is not None:
                self.sizes[anchor] = size
            self._nest(size)  # already in the total, node by node
        elif isinstance(event, events.ScalarEvent):
            if event.anchor is not None:
                self.sizes[event.anchor] = 1
            self._count(event, 1)
            self._nest(1)
        elif isinstance(event, events.AliasEvent):
            size = self._alias_size(event)
            self._count(event, size)
            self._nest(size)

    def _alias_size(self, event: Any) -> int:
        if any(anchor == event.anchor for anchor, _ in self.open):
            self._refuse(event, f"alias *{event.anchor} refers to a collection that contains it")
        return self.sizes.get(event.anchor, 1)  # an undefined alias: the composer reports it

    def _count(self, event: Any, size: int) -> None:
        self.total += size
        if self.total > self.max_nodes:
            self._refuse(
                event,
                f"expands to more than {self.max_nodes:,} nodes (each alias counted with what it refers to)",
            )

    def _nest(self, size: int) -> None:
        """Add a finished node's expanded size to the collection that holds it (if any)."""
        if self.open:
            self.open[-1][1] += size

    def _refuse(self, event: Any, reason: str) -> None:
        raise SchemaError("", f"{self.where}:{event.start_mark.line + 1}: {reason}; refused")


# ------------------------------------------------------------------------------ JSON


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        super().__init__(key)  # args = (key,): pickles like every exception of ours
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object_pairs_hook: the object, unless a key is given twice (then `_DuplicateKey`)."""
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    raise AssertionError("unreachable: dict() dropped a pair, so a key repeats")


def _json_too_deep(text: str, max_depth: int) -> int | None:
    """The line where `text` first nests deeper than `max_depth`, or None; never recursive.

    The common case costs two regex passes (strings out, then everything but brackets) and a loop
    over the brackets; only a refusal scans again, with positions, for the line.
    """
    depth = 0
    for bracket in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        depth += 1 if bracket in ("[", "{") else -1
        if depth > max_depth:
            break
    else:
        return None
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        if match.group() in ("[", "{"):
            depth += 1
            if depth > max_depth:
                return text.count("\n", 0, match.start()) + 1
        elif match.group() in ("]", "}"):
            depth -= 1
    return None  # unreachable for the text the first pass saw


def _json_duplicate(text: str, where: str, key: str) -> str:
    """The message for a JSON object with `key` given twice: the first duplicate in the text, with
    both its lines (found by a scan that keeps each open object's keys and their lines)."""
    objects: list[dict[str, int] | None] = []  # per open bracket: its keys, or None for an array
    line, last = 1, 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            objects.append({} if token == "{" else None)
        elif token in ("]", "}"):
            del objects[-1:]
        elif match.group(1) is not None and objects and objects[-1] is not None:
            line, last = line + text.count("\n", last, match.start()), match.start()
            name = json.loads(_JSON_STRING.match(token).group())  # type: ignore[union-attr]
            if name in objects[-1]:
                return f"{where}:{line}: key {name!r} is given twice (first at line {objects[-1][name]})"
            objects[-1][name] = line
    return f"{where}: key {key!r} is given twice"
