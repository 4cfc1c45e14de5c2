"""Where independent pieces of work run: in this process (the default), or as Ray tasks.

``executor.map(fn, items)`` yields ``(item, result)`` as each item finishes, where ``result`` is
``fn(item)`` or the exception it raised (a failed item never stops the others). ``fn`` and the
items must be picklable for Ray: module-level functions and plain data. Ray is optional
(``pip install 'vitslim[ray]'``); ``RayExecutor`` joins a cluster at ``address`` or starts a
local one, and gives every task ``cpus`` CPUs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from vitslim.config import check_choice
from vitslim.errors import UserError

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "make_executor", "require_ray"]

EXECUTORS = ("local", "ray")


#: why joining an existing cluster may fail: it wants a token (as `ray start` makes it in Ray 2.60)
AUTH_HINT = (
    " (a cluster with token authentication, the default of `ray start --head` in Ray 2.60, needs "
    "RAY_AUTH_MODE=token here and its token in ~/.ray/auth_token or RAY_AUTH_TOKEN: `ray get-auth-token` "
    "on the head node)"
)


class Executor(Protocol):
    name: str
    #: CPUs (threads) each task gets
    cpus: int

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]: ...

    def capacity(self) -> int:
        """How many tasks run at once."""
        ...

    def close(self) -> None: ...


class LocalExecutor:
    """Everything in this process, one item after the other."""

    name = "local"

    def __init__(self, cpus: int = 1) -> None:
        self.cpus = max(int(cpus), 1)

    def capacity(self) -> int:
        return 1

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        for item in items:
            try:
                yield item, fn(item)
            except Exception as exc:  # noqa: BLE001  (recorded per item, the others go on)
                yield item, exc

    def close(self) -> None:
        return None


def require_ray() -> Any:
    """The ``ray`` module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("Ray is not installed: pip install 'vitslim[ray]' (or the ray package)") from None
    return ray


class RayExecutor:
    """Each item as a Ray task of ``cpus`` CPUs, on the cluster at ``address`` (a local one when
    None, sized to this machine); a cluster this executor started is shut down by :meth:`close`."""

    name = "ray"

    def __init__(self, address: str | None = None, cpus: int = 1) -> None:
        ray = require_ray()
        self.cpus = max(int(cpus), 1)
        self.started = not ray.is_initialized()
        if self.started:
            try:
                ray.init(
                    address=address,
                    num_cpus=None if address else os.cpu_count(),
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
                hint = "" if os.environ.get("RAY_AUTH_MODE") or not address else AUTH_HINT
                raise UserError(f"cannot start or join {where}: {str(exc).splitlines()[0]}{hint}") from None
        self.address = ray.get_runtime_context().gcs_address

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
        ray = require_ray()
        task = ray.remote(num_cpus=self.cpus, max_retries=0)(fn)
        pending = {task.remote(item): item for item in items}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                item = pending.pop(ref)
                try:
                    yield item, ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    yield item, exc.cause if isinstance(exc.cause, BaseException) else exc
                except ray.exceptions.RayError as exc:  # a killed worker, a lost node
                    yield item, exc

    def capacity(self) -> int:
        cpus = require_ray().cluster_resources().get("CPU", self.cpus)
        return max(int(cpus) // self.cpus, 1)

    def close(self) -> None:
        if self.started:
            require_ray().shutdown()
            self.started = False


def make_executor(name: str, address: str | None = None, cpus: int = 1) -> Executor:
    """``local`` or ``ray`` (``address``: an existing cluster, e.g. ``ray://head:10001``)."""
    check_choice("executor", name, EXECUTORS)
    if name == "ray":
        return RayExecutor(address, cpus)
    if address:
        raise UserError("--ray-address needs --executor ray")
    return LocalExecutor(cpus)
