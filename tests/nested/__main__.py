"""By hand: ``python3 -m tests.nested [CASE,...|all] [--keep]`` runs the nested check and
prints, per case, podplug's exit code, its progress lines inside L1 and L2's console.

The test suite judges the same run (``tests/nested/test_nested_vfio_vm.py``); this is for
following and debugging it. Exit code 0 when every case's podplug exited 0.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from tests.nested.cases import selected
from tests.nested.harness import podplug_kernel, run_l1


def main(argv: list[str]) -> int:
    keep = "--keep" in argv
    names = [a for a in argv if a != "--keep"]
    cases = [dict(c) for c in selected(names[0] if names else "")]
    work = Path(tempfile.mkdtemp(prefix="podplug-nested-"))
    try:
        result = run_l1(work, podplug_kernel(work), cases)
        print(f"L1 exited, rc {result.rc}, {result.wall:.0f} s on L0")
        print(result.output.rstrip())
        failed = 0
        for name, case in result.cases.items():
            print(f"== {name}: podplug rc {case['rc']} in {case['seconds']} s")
            print(str(case["stderr"]).rstrip())
            print("-- L2 console:\n" + str(case.get("l2_serial", "")).rstrip()[-1500:])
            failed += case["rc"] != 0
        missing = len(cases) - len(result.cases)
        if missing:
            print(f"{missing} case(s) did not run; L1 console tail:")
            print((work / "l1-serial.log").read_text(errors="replace")[-3000:])
        return 1 if failed or missing else 0
    finally:
        if keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
