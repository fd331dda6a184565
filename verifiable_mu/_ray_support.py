"""Connecting to Ray (an optional extra), shared by the prover's and the verifier's Ray backends.

Nothing here imports Ray until a function is called, and nothing here imports torch.

Connecting. :func:`connect` reuses a Ray connection this process already has; with no address
(and no ``RAY_ADDRESS``) it starts a private local instance (``num_cpus`` = the cores this
process may use, no dashboard); with an address it first probes the TCP port, so that an
unreachable cluster gives a clear error at once instead of Ray's long wait, and if Ray token
authentication is not configured explicitly (``RAY_AUTH_MODE`` unset) but a token is available
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``), the token is sent.

Errors. The caller names the exception classes (each a :class:`~verifiable_mu._errors.VmuError`):
``missing`` when Ray is not installed, ``error`` when Ray cannot be started or reached. The
defaults are :class:`~verifiable_mu._errors.MalformedInput` for both (a backend that cannot be
used is a bad argument, not a failed check). Messages are one line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import warnings
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

from ._errors import MalformedInput, VmuError

__all__ = [
    "INSTALL_HINT",
    "PROBE_TIMEOUT_S",
    "available_cores",
    "connect",
    "default_token_path",
    "enable_token_mode",
    "first_line",
    "in_order",
    "host_port",
    "import_ray",
    "max_node_cpus",
    "probe",
    "protect_token_file",
    "token_available",
]

#: Seconds to wait for the cluster's TCP port before giving up.
PROBE_TIMEOUT_S = 5.0
INSTALL_HINT = (
    "the Ray backend needs Ray, which is not installed: pip install 'verifiable-mu[ray]' (or use --backend local)"
)


def import_ray(*, missing: type[VmuError] = MalformedInput) -> Any:
    """``import ray``, or raise ``missing`` with an install hint."""
    try:
        import ray
    except ImportError as e:
        raise missing(INSTALL_HINT) from e
    return ray


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_token_path() -> str:
    """Where Ray 2.60 keeps its authentication token unless told otherwise: ``~/.ray/auth_token``."""
    return os.path.join(os.path.expanduser("~"), ".ray", "auth_token")


def protect_token_file(path: str | None = None) -> bool:
    """Make the Ray token file readable by its owner alone (Ray 2.60 writes ``~/.ray/auth_token``
    with mode 0644: anyone on the machine could join the cluster and run code on it). Only a
    file this user owns is changed, with a warning; returns whether it was changed."""
    path = path or os.environ.get("RAY_AUTH_TOKEN_PATH") or default_token_path()
    try:
        st = os.stat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or not st.st_mode & 0o077:
        return False
    os.chmod(path, 0o600)
    warnings.warn(
        f"the Ray token file {path} was readable by others (mode {stat.S_IMODE(st.st_mode):o}); it is now 600",
        stacklevel=2,
    )
    return True


def token_available() -> bool:
    """Whether a Ray authentication token is available to this process."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or default_token_path()
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` (also ``ray://host:port``, ``[v6]:port``) -> (host, port); None if it is
    not of that form (``auto``, ``local``): Ray then resolves it itself."""
    a = address.strip()
    if "://" in a:
        a = a.split("://", 1)[1]
    a = a.rstrip("/")
    host, sep, port = a.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    return host.strip("[]"), int(port)


def probe(address: str, *, error: type[VmuError] = MalformedInput) -> None:
    """Open and close a TCP connection to ``address`` (if it names a host and port)."""
    hp = host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise error(
            f"cannot reach the Ray cluster at {address}: {reason} (is 'ray start --head' running there, "
            "and is the port open from here?)"
        ) from e


def first_line(e: BaseException) -> str:
    """The first line of an exception's text (at most 300 characters), or its type's name."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def enable_token_mode() -> None:
    """Turn on Ray's token mode in this process (the environment variable alone is not enough
    once Ray's configuration has been read)."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # pragma: no cover - another Ray layout: the variable is read at init
        os.environ["RAY_AUTH_MODE"] = "token"
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    missing: type[VmuError] = MalformedInput,
    error: type[VmuError] = MalformedInput,
) -> None:
    """Attach to Ray: reuse this process's connection, join ``address`` (or ``RAY_ADDRESS``),
    or start a private local instance with ``num_cpus`` CPUs (default: the usable cores)."""
    ray = import_ray(missing=missing)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        probe(address, error=error)
    if ray.is_initialized():
        return
    protect_token_file()
    if address is None:
        try:
            ray.init(
                num_cpus=num_cpus or available_cores(),
                include_dashboard=False,
                logging_level=logging.WARNING,
            )
        except Exception as e:  # Ray raises plain RuntimeError/ConnectionError here
            raise error(f"cannot start a local Ray instance: {first_line(e)}") from e
        protect_token_file()  # a local instance may just have written it
        return
    if "RAY_AUTH_MODE" not in os.environ and token_available():
        # Ray 2.60 sends its token to an explicit address only in token mode (it turns that on by
        # itself only for a cluster it finds locally); a cluster that checks no tokens ignores it.
        enable_token_mode()
    try:
        ray.init(address=address, logging_level=logging.WARNING)
    except Exception as e:
        if os.environ.get("RAY_AUTH_MODE", "").lower() == "token" and token_available():
            hint = "; if the cluster uses token authentication, check that this machine has the cluster's token"
        else:
            hint = "; if the cluster uses token authentication, this machine needs its token"
        hint += f" (in {default_token_path()}, RAY_AUTH_TOKEN or the file named by RAY_AUTH_TOKEN_PATH)"
        raise error(f"cannot reach the Ray cluster at {address}: {first_line(e)}{hint}") from e


def max_node_cpus(ray: Any) -> float:
    """The most CPUs any one live node of the connected cluster has (0 if none is known)."""
    best = 0.0
    for node in ray.nodes():
        if node.get("Alive", node.get("alive", False)):
            best = max(best, float(node.get("Resources", {}).get("CPU", 0)))
    return best


_T = TypeVar("_T")


def in_order(
    ray: Any,
    items: Sequence[_T],
    submit: Callable[[_T], Any],
    window: int,
    *,
    task_failed: Callable[[_T, BaseException], Exception],
    ray_failed: Callable[[_T, BaseException], Exception],
    force_cancel: bool = False,
) -> Generator[tuple[_T, Any], None, None]:
    """Submit ``items`` with at most ``window`` tasks in flight (``submit(item)`` returns the
    task's object ref) and yield ``(item, result)`` in the order of ``items``.

    A task that raised re-raises its own exception when it is one (as the local backend would
    raise it), else ``task_failed(item, error)``; a task Ray could not finish raises
    ``ray_failed(item, error)``. Closing the generator early (a mismatch, an error) cancels the
    tasks still in flight, best effort (``force_cancel`` kills their workers)."""
    pending: deque[tuple[_T, Any]] = deque()
    todo = deque(items)
    try:
        while todo or pending:
            while todo and len(pending) < window:
                item = todo.popleft()
                pending.append((item, submit(item)))
            item, ref = pending.popleft()  # fetched below: done or failed, never to be cancelled
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, Exception):
                    raise cause from None  # the worker's own exception, one line as it was raised
                raise task_failed(item, e) from e
            except ray.exceptions.RayError as e:
                raise ray_failed(item, e) from e
            yield item, result
    finally:
        for _, ref in pending:  # stopped early: do not leave work running (only tasks not fetched)
            with contextlib.suppress(Exception):  # best effort; the task may have finished
                ray.cancel(ref, force=force_cancel)
