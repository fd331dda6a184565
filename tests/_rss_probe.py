"""Run ``vmu-verify`` on many bundles, one forked child per bundle, and report each child's exit
code, stderr and peak resident memory (``ru_maxrss`` of that child alone, from ``os.wait4``).

    python tests/_rss_probe.py JOBS.json OUT.json

JOBS.json: ``{"address_space": bytes or null, "jobs": [{"name", "argv"}...]}``. The parent imports
the verifier once (no torch), so each child starts at the RSS of a fresh ``vmu-verify`` process
and adds what verifying its bundle takes. ``address_space`` sets ``RLIMIT_AS`` in each child (the
``ulimit -v`` of that run). Used by tests/test_resources.py.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile

import verifier.cli


def _child(argv: list[str], err_path: str, address_space: int | None) -> None:
    try:
        fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        if address_space:
            resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
        rc = verifier.cli.main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 2
    except BaseException as e:  # noqa: BLE001  (reported through the exit code and stderr)
        os.write(2, f"probe: uncaught {type(e).__name__}: {e}\n".encode())
        rc = 99
    sys.stderr.flush()
    os._exit(rc)


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, job in enumerate(spec["jobs"]):
            err = os.path.join(tmp, f"{i}.err")
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(job["argv"], err, spec.get("address_space"))
            _, status, ru = os.wait4(pid, 0)
            with open(err, errors="replace") as f:
                stderr = f.read()
            out.append({"name": job["name"], "rc": os.waitstatus_to_exitcode(status),
                        "maxrss": ru.ru_maxrss * 1024, "stderr": stderr})
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
