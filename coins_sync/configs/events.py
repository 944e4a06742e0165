"""The fast event reader: rule files in the plain subset of YAML, read straight from the
parser's events.

A file written in the plain subset that rule files use (block or flow collections,
strings and decimal integers, no tags, anchors, aliases or merge keys) is read from the
C parser's events into the located document, without building a node tree. Anything
else, including every file with a YAML problem, gives :data:`NOT_PLAIN`, and the full
reader (:func:`coins_sync.configs.located.read_full`) reads it and words the problem;
both give the same document whenever this reader gives one.
"""

from __future__ import annotations

from typing import Any

import yaml

from coins_sync.configs.located import (
    MAX_INT_CHARS,
    STRICT_BOOL,
    STRICT_INT,
    LocatedList,
    LocatedLoader,
    LocatedMap,
)

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
# A plain scalar whose first character starts no implicit resolver is always a string.
_RESOLVER_FIRSTS = frozenset(k for k in LocatedLoader.yaml_implicit_resolvers if k)
# The event reader is sound only while tags are resolved by first character alone.
_EVENTS_USABLE = (
    None not in LocatedLoader.yaml_implicit_resolvers and not LocatedLoader.yaml_path_resolvers
)
NOT_PLAIN: Any = object()  # "read it with read_full"; never part of a document
_NO_KEY: Any = object()
_MISSING: Any = object()
_PLAIN_CACHE_LIMIT = 65_536


def _resolve_plain(loader: LocatedLoader, text: str) -> Any:
    """A plain scalar as the full loader reads it, when that is a string, a strict
    decimal integer or a YAML 1.2 boolean (``retired: true``) with nothing to report;
    otherwise NOT_PLAIN."""
    tag = loader.resolve(yaml.ScalarNode, text, (True, False))
    if tag == _STR_TAG:
        return text
    if tag == _INT_TAG and STRICT_INT.match(text) and len(text) <= MAX_INT_CHARS:
        return int(text)
    if tag == _BOOL_TAG and text in STRICT_BOOL:
        return text.lower() == "true"
    return NOT_PLAIN


def _read_events(loader: LocatedLoader, plain: dict[str, Any]) -> Any:
    """The document read from parser events without building a node tree.

    Returns NOT_PLAIN as soon as the input leaves the plain subset or has anything to
    report (a duplicate key, a YAML 1.1 surprise, a syntax error, a second document),
    so that the full loader reads it and words the problem. ``plain`` memoises how
    plain scalars resolve.
    """
    get = loader.get_event
    if type(get()) is not yaml.StreamStartEvent or type(get()) is not yaml.DocumentStartEvent:
        return NOT_PLAIN
    scalar_event, map_start, seq_start = (
        yaml.ScalarEvent,
        yaml.MappingStartEvent,
        yaml.SequenceStartEvent,
    )
    collection_ends = (yaml.MappingEndEvent, yaml.SequenceEndEvent)
    firsts = _RESOLVER_FIRSTS
    root: Any = NOT_PLAIN
    parents: list[Any] = []
    node: Any = None  # the innermost open collection
    in_list = False
    key: Any = _NO_KEY
    key_mark = (0, 0)
    while True:
        event = get()
        kind = type(event)
        opened: Any = None
        if kind is scalar_event:
            if event.anchor is not None or event.tag is not None:
                return NOT_PLAIN
            value = event.value
            if event.implicit[0] and (not value or value[0] in firsts):
                resolved = plain.get(value, _MISSING)
                if resolved is _MISSING:
                    resolved = _resolve_plain(loader, value)
                    if len(plain) < _PLAIN_CACHE_LIMIT:
                        plain[value] = resolved
                if resolved is NOT_PLAIN:
                    return NOT_PLAIN
                value = resolved
        elif kind is map_start or kind is seq_start:
            if event.anchor is not None or event.tag is not None:
                return NOT_PLAIN
            mark = event.start_mark
            value = opened = (LocatedMap if kind is map_start else LocatedList)(
                mark.line + 1, mark.column + 1
            )
        elif kind in collection_ends:
            node = parents.pop()
            in_list = type(node) is LocatedList
            continue
        elif kind is yaml.DocumentEndEvent and node is None:
            break
        else:  # aliases and anything unforeseen
            return NOT_PLAIN
        mark = event.start_mark
        where = (mark.line + 1, mark.column + 1)
        if in_list:
            node.append(value)
            node.item_marks.append(where)
        elif node is None:
            root = value
        elif key is _NO_KEY:
            if opened is not None or value in node:  # a complex or duplicate key
                return NOT_PLAIN
            key, key_mark = value, where
            continue
        else:
            node[key] = value
            node.key_marks[key] = key_mark
            node.value_marks[key] = where
            key = _NO_KEY
        if opened is not None:
            parents.append(node)
            node, in_list = opened, kind is seq_start
    if type(get()) is not yaml.StreamEndEvent:
        return NOT_PLAIN
    return root


def read_plain(text: str, plain: dict[str, Any] | None = None) -> Any:
    """Parse one document of the plain subset fast; NOT_PLAIN means "use read_full".

    Whenever it returns a document, :func:`read_full` returns an equal one (same values,
    same locations) and no problem. ``plain`` memoises how plain scalars resolve.
    """
    if not _EVENTS_USABLE:
        return NOT_PLAIN
    loader = LocatedLoader(text)
    try:
        return _read_events(loader, {} if plain is None else plain)
    except yaml.YAMLError:
        return NOT_PLAIN
    finally:
        loader.dispose()
