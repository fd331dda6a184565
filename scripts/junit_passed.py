"""Exit 0 when a pytest JUnit XML report records exactly one test and that test passed.

Used by scripts/check.sh for the Ray tests, which run one per process: Ray's driver-side SIGTERM
handler can end the process with status 1 after pytest has written its report. The report, not
the status, then says whether the test passed. Anything else -- no report, a failure, an error, a
skip, more or fewer than one test -- exits 1.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def passed_once(path: str) -> bool:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return False
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    cases = [c for s in suites for c in s.iter("testcase")]
    if len(cases) != 1:
        return False
    return not any(child.tag in ("failure", "error", "skipped") for child in cases[0])


if __name__ == "__main__":
    sys.exit(0 if len(sys.argv) == 2 and passed_once(sys.argv[1]) else 1)
