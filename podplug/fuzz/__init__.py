"""The fuzzer (issue 10, "total parsers"): generated and mutated Kata TOML, OCI specs, CDI
specs, sysfs trees and annotation sets driven through loading, planning, rendering and
``doctor``, by the CLI's own entry point, with counts by outcome.

* :mod:`podplug.fuzz.gen`: documents built from pools of edge values (pure);
* :mod:`podplug.fuzz.mutate`: byte-level damage (pure);
* :mod:`podplug.fuzz.case`: one case as a function of ``(seed, index)`` (pure);
* :mod:`podplug.fuzz.workbench`: files written, sysfs damaged and restored, the command run
  under a time bound, the outcome judged (shell);
* ``python3 -m podplug.fuzz``: the command.
"""
