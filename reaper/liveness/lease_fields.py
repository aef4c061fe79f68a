"""The lease a wrapped run adds to its claim (``lock-reaper run -- terraform ...``).

The wrapper writes the claim item (the same ``Who``/``ClaimedAt`` key as ``claim``)
with these attributes, then updates them in place:

- ``LeaseSeconds`` (N): the lease duration; the heartbeat is renewed every third of it;
- ``Heartbeat`` (N): a counter, 0 at the claim, +1 on every renewal
  (``SET Heartbeat = Heartbeat + :one``); the reaper trusts the counter, never the time;
- ``HeartbeatAt`` (S): the writer's clock at the last renewal (``claim_time`` format);
  it can only make a lease look alive, never dead;
- ``Containment`` (S): what keeps the command from outliving the wrapper, comma-separated
  from ``CONTAINMENT_KINDS`` (``pdeathsig``, ``pidns``, ``subreaper``, ``poll``), or ``none``;
- ``Fenced`` (BOOL): the wrapper stops the command before the lease can expire when it
  cannot renew (self-fencing);
- ``Exclusive`` (BOOL): no other terraform/tofu process of this user was seen on this host
  outside the wrapped group, at the start and at every renewal (sticky: once false, stays
  false). A lock's ``Who`` names only user@host, so without it a plain ``terraform`` in
  another terminal could be taken for the wrapped one: the lease then proves nothing dead;
- ``EndedAt`` (S) and ``ExitCode`` (N): written once the whole child process group exited.

A claim without ``LeaseSeconds`` has no lease (``LeaseState.from_item`` gives None).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..models import claim_time, parse_created

LEASE_SECONDS = "LeaseSeconds"
HEARTBEAT = "Heartbeat"
HEARTBEAT_AT = "HeartbeatAt"
CONTAINMENT = "Containment"
FENCED = "Fenced"
EXCLUSIVE = "Exclusive"
ENDED_AT = "EndedAt"
EXIT_CODE = "ExitCode"

CONTAINMENT_KINDS = ("pdeathsig", "pidns", "subreaper", "poll")
# what makes the command die with the wrapper (a subreaper only waits for orphans; it kills nothing)
KILLS_WITH_WRAPPER = frozenset({"pdeathsig", "pidns", "poll"})


class LeaseState(BaseModel):
    """The lease attributes of one claim item, as last read."""

    model_config = ConfigDict(frozen=True)

    seconds: int = Field(ge=1)
    heartbeat: int = Field(default=0, ge=0)
    heartbeat_at: datetime | None = None
    containment: tuple[str, ...] = ()
    fenced: bool = False
    exclusive: bool = False
    ended_at: datetime | None = None
    exit_code: int | None = None

    @property
    def contained(self) -> bool:
        """The command cannot outlive the wrapper (a guard kills its group when the wrapper dies)."""
        return bool(KILLS_WITH_WRAPPER.intersection(self.containment))

    def to_item(self) -> dict[str, Any]:
        item: dict[str, Any] = {
            LEASE_SECONDS: {"N": str(self.seconds)},
            HEARTBEAT: {"N": str(self.heartbeat)},
            CONTAINMENT: {"S": ",".join(self.containment) or "none"},
            FENCED: {"BOOL": self.fenced},
            EXCLUSIVE: {"BOOL": self.exclusive},
        }
        if self.heartbeat_at is not None:
            item[HEARTBEAT_AT] = {"S": claim_time(self.heartbeat_at)}
        if self.ended_at is not None:
            item[ENDED_AT] = {"S": claim_time(self.ended_at)}
        if self.exit_code is not None:
            item[EXIT_CODE] = {"N": str(self.exit_code)}
        return item

    @classmethod
    def from_item(cls, item: Mapping[str, Any]) -> LeaseState | None:
        """The lease of a claim item; None without ``LeaseSeconds``. Raises ValueError on a malformed one."""
        raw = item.get(LEASE_SECONDS)
        if not isinstance(raw, dict) or not raw.get("N"):
            return None

        def s(k: str) -> str | None:
            v = item.get(k)
            return v.get("S") if isinstance(v, dict) else None

        def n(k: str) -> int | None:
            v = item.get(k)
            text = v.get("N") if isinstance(v, dict) else None
            return int(text) if text not in (None, "") else None

        kinds = tuple(k for k in (s(CONTAINMENT) or "").split(",") if k and k != "none")
        def b(k: str) -> bool:
            v = item.get(k)
            return bool(v.get("BOOL")) if isinstance(v, dict) else False

        hb_at, ended = s(HEARTBEAT_AT), s(ENDED_AT)
        return cls(
            seconds=int(raw["N"]),
            heartbeat=n(HEARTBEAT) or 0,
            heartbeat_at=parse_created(hb_at) if hb_at else None,
            containment=kinds,
            fenced=b(FENCED),
            exclusive=b(EXCLUSIVE),
            ended_at=parse_created(ended) if ended else None,
            exit_code=n(EXIT_CODE),
        )
