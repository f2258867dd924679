"""YAML as the CDI reference reads it, and no more (pure): YAML 1.1 through PyYAML's safe
loader (the reference uses goyaml.v2, also YAML 1.1: ``yes`` is true), with two refusals
a safe loader does not make by itself:

* a mapping key given twice (goyaml.v2's strict mode refuses it, in JSON files too);
* aliases (``*name``): a CDI spec has no use for them, and nested aliases are how a few
  hundred bytes become a "billion laughs" of work for whoever walks the result;
* flow collections (``[``, ``{``) nested more than :data:`MAX_FLOW_DEPTH` deep: PyYAML's
  scanner keeps a possible simple key per flow level and revisits them all at every token,
  so 5,000 ``[`` took 1.4 s to refuse (found by ``podplug.fuzz``). A CDI spec nests a few
  levels.

Values the constructor cannot make (an integer of more than 4,300 digits, Python's bound on
``int()`` of a string) are errors too.

Any failure is one :class:`StrictYamlError` line with the position.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node
from yaml.scanner import ScannerError
from yaml.tokens import Token

MAX_FLOW_DEPTH = 64


class StrictYamlError(ValueError):
    """The text is not YAML podplug accepts; ``str()`` is one line."""


class _StrictLoader(yaml.SafeLoader):
    def fetch_flow_collection_start(self, token_class: type[Token]) -> None:
        if self.flow_level >= MAX_FLOW_DEPTH:
            raise ScannerError(None, None, f"flow collections nested deeper than "
                               f"{MAX_FLOW_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(token_class)

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
    except ValueError as err:  # int() of over 4,300 digits, in the constructor
        raise StrictYamlError(f"invalid YAML: a value podplug cannot read "
                              f"({' '.join(str(err).split())})"[:300]) from err
