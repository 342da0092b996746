"""Does a value fit its declared type? Used on cached results before a node's consumers see them.

Node packs describe their domain values once, as TypedDicts and plain annotations in a
``VALUE_TYPES`` mapping (type name -> annotation) next to ``NODE_CLASS_MAPPINGS``; the
primitive types are known here. The check is structural and iterative: keys, element
types and classes, never the numbers inside tensors.
"""

from __future__ import annotations

import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

PRIMITIVES: dict[str, Any] = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


def _is_instance(value: Any, cls: type) -> bool:
    if cls is float:  # JSON writes 1.0 as 1
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if cls is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, cls)


def conforms(value: Any, annotation: Any) -> bool:
    """True when ``value`` has the shape ``annotation`` describes."""
    pending = [(value, annotation)]
    while pending:
        item, expected = pending.pop()
        if expected is Any:
            continue
        if expected is None or expected is type(None):
            if item is not None:
                return False
            continue
        origin = get_origin(expected)
        if origin in (Union, types.UnionType):
            if not any(conforms(item, option) for option in get_args(expected)):
                return False
            continue
        if origin is Literal:
            if item not in get_args(expected):
                return False
            continue
        if is_typeddict(expected):
            if not isinstance(item, dict):
                return False
            hints = get_type_hints(expected)
            if not expected.__required_keys__ <= item.keys() or not item.keys() <= hints.keys():
                return False
            pending.extend((item[key], hints[key]) for key in item)
            continue
        if origin in (dict, dict):
            key_type, value_type = get_args(expected) or (Any, Any)
            if not isinstance(item, dict):
                return False
            pending.extend((key, key_type) for key in item)
            pending.extend((element, value_type) for element in item.values())
            continue
        if origin in (list, list):
            (element_type,) = get_args(expected) or (Any,)
            if not isinstance(item, list):
                return False
            pending.extend((element, element_type) for element in item)
            continue
        if origin is tuple:
            arguments = get_args(expected)
            if not isinstance(item, tuple):
                return False
            if len(arguments) == 2 and arguments[1] is Ellipsis:
                pending.extend((element, arguments[0]) for element in item)
            elif arguments:
                if len(arguments) != len(item):
                    return False
                pending.extend(zip(item, arguments, strict=True))
            continue
        if isinstance(expected, type) and not _is_instance(item, expected):
            return False
    return True
