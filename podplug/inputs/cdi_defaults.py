"""The CDI names a command needs before it knows whether it reads any CDI spec.

Kept apart from :mod:`podplug.inputs.cdi` so that loading a spec that asks for no CDI
device (most specs, the demo's among them) does not import the CDI model: its dataclasses
and patterns are a noticeable part of ``podplug plan``'s start-up.
"""

from __future__ import annotations

from collections.abc import Iterable

DEFAULT_CDI_DIRS: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")
CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
DEV = "/dev"  # where CDI device nodes are completed from (podplug.host.devnodes)


def requests_cdi(annotation_keys: Iterable[str]) -> bool:
    """Whether any ``cdi.k8s.io/<key>`` annotation is there. Its value then names at least
    one device or is refused (:func:`podplug.inputs.cdi.cdi_references`)."""
    return any(key.startswith(CDI_ANNOTATION_PREFIX) for key in annotation_keys)
