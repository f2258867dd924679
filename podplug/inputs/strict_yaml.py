"""YAML as the CDI reference reads it, and no more (pure): YAML 1.1 through PyYAML's safe
loader (the reference uses goyaml.v2, also YAML 1.1: ``yes`` is true), with two refusals
a safe loader does not make by itself:

* a mapping key given twice (goyaml.v2's strict mode refuses it, in JSON files too);
* aliases (``*name``): a CDI spec has no use for them, and nested aliases are how a few
  hundred bytes become a "billion laughs" of work for whoever walks the result.

Any failure is one :class:`StrictYamlError` line with the position.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node


class StrictYamlError(ValueError):
    """The text is not YAML podplug accepts; ``str()`` is one line."""


class _StrictLoader(yaml.SafeLoader):
    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        if self.check_event(AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ConstructorError(None, None, "aliases (*name) are not accepted",
                                   event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:
                duplicate = False  # an unhashable key: the base constructor refuses it
            if duplicate:
                raise ConstructorError(None, None, f"duplicate key {key!r}",
                                       key_node.start_mark)
            if not isinstance(key, list | dict):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> object:
    """One YAML (or JSON) document.

    :raises StrictYamlError: for bad syntax, a duplicate key, an alias or several documents.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as err:
        raise StrictYamlError(f"invalid YAML: {' '.join(str(err).split())}"[:300]) from err
    except RecursionError as err:
        raise StrictYamlError("invalid YAML: nested too deeply") from err
