"""The pure decision: (lock, liveness fact, policy, now) -> Decision with reasons.

No boto3, no clock, no I/O: everything it needs is passed in. Every reason is a
``Reason`` with its ``ReasonCode``. The engine calls
``decide`` once without a liveness fact; when the answer says
``needs_liveness``, it asks the checkers (only then) and calls again.

The rules, in order (the first that applies wins):
1. Info unparseable, Path != lock path, Created in the future beyond skew,
   excluded, no matching rule, younger than min_age or max_age: keep.
2. Holder confirmed alive: keep (flag it past hard_max_age).
3. Holder confirmed dead and age >= max_age: reap.
4. Holder unknown: reap only at age >= hard_max_age, otherwise keep.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .durations import format_duration
from .models import Action, Decision, Flag, Liveness, LivenessFact, LockRecord, Reason
from .models import ReasonCode as C
from .policy import Policy


def _keep(*reasons: Reason, flags: set[Flag] | None = None, **kw) -> Decision:
    return Decision(action=Action.KEEP, reasons=tuple(reasons), flags=frozenset(flags or ()), **kw)


def decide(lock: LockRecord, policy: Policy, now: datetime, fact: LivenessFact | None = None) -> Decision:
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    info = lock.info
    if info is None:
        return _keep(Reason(C.UNPARSEABLE, f"unparseable lock: {lock.parse_error or 'no Info'}"), flags={Flag.UNPARSEABLE})

    if info.Path != lock.lock_path:
        return _keep(
            Reason(C.PATH_MISMATCH,
                   f"Info.Path {info.Path!r} differs from the lock's path {lock.lock_path!r}: suspicious, kept"),
            flags={Flag.PATH_MISMATCH},
        )

    age = now - info.Created
    age_s = age.total_seconds()
    if age_s < -policy.clock_skew.total_seconds():
        return _keep(
            Reason(C.FUTURE_CREATED, f"Created {info.Created.isoformat()} is {format_duration(-age)} in the future "
                   f"(beyond the {format_duration(policy.clock_skew)} clock skew): kept"),
            flags={Flag.FUTURE_CREATED},
            age_seconds=age_s,
        )
    age_s = max(age_s, 0.0)
    age_txt = format_duration(age_s)

    pattern = policy.excluded_by(lock.lock_path)
    if pattern is not None:
        return _keep(Reason(C.EXCLUDED, f"excluded by {pattern!r}"), flags={Flag.EXCLUDED}, age_seconds=age_s)

    rule = policy.rule_for(lock.lock_path, info.Operation)
    if rule is None:
        return _keep(
            Reason(C.NO_RULE, f"no rule matches path {lock.lock_path!r} with operation {info.Operation or '(none)'}"),
            flags={Flag.NO_RULE},
            age_seconds=age_s,
        )
    common: dict[str, Any] = {"rule": rule.label, "age_seconds": age_s}

    if age_s < policy.min_age.total_seconds():
        return _keep(Reason(C.BELOW_MIN_AGE, f"age {age_txt} is below the min_age floor {format_duration(policy.min_age)}"),
                     **common)
    if age_s < rule.max_age.total_seconds():
        below = f"age {age_txt} is below max_age {format_duration(rule.max_age)} (rule {rule.label})"
        return _keep(Reason(C.BELOW_MAX_AGE, below), **common)

    stale = Reason(C.STALE, f"age {age_txt} >= max_age {format_duration(rule.max_age)} (rule {rule.label})")
    if fact is None:
        return _keep(stale, Reason(C.NOT_CHECKED, "holder liveness not checked yet"),
                     needs_liveness=True, flags={Flag.STALE}, **common)

    past_hard = rule.hard_max_age is not None and age_s >= rule.hard_max_age.total_seconds()
    hard_txt = f"hard_max_age {format_duration(rule.hard_max_age)}" if rule.hard_max_age is not None else ""
    holder = {Liveness.ALIVE: C.HOLDER_ALIVE, Liveness.DEAD: C.HOLDER_DEAD, Liveness.UNKNOWN: C.HOLDER_UNKNOWN}
    evidence = Reason(holder[fact.state], f"holder {fact.state.value}: {fact.reason}")

    if fact.state is Liveness.ALIVE:
        flags = {Flag.STALE}
        reasons = [stale, evidence, Reason(C.NEVER_WHILE_ALIVE, "never reaped while the holder is alive")]
        if past_hard:
            flags.add(Flag.ALIVE_PAST_HARD_MAX)
            reasons.append(Reason(C.PAST_HARD_MAX_ALERT, f"age is past {hard_txt}: alert"))
        return _keep(*reasons, flags=flags, **common)

    if fact.state is Liveness.DEAD:
        return Decision(action=Action.REAP, reasons=(stale, evidence), flags=frozenset({Flag.STALE}), **common)

    # Unknown means keep, unless the policy explicitly allows it past hard_max_age.
    if past_hard:
        return Decision(
            action=Action.REAP,
            reasons=(stale, evidence,
                     Reason(C.HARD_MAX_ALLOWS, f"age >= {hard_txt}: the policy allows reaping an unknown holder")),
            flags=frozenset({Flag.STALE}),
            **common,
        )
    tail = f"kept until {hard_txt}" if rule.hard_max_age is not None else "no hard_max_age: kept"
    return _keep(stale, evidence, Reason(C.UNKNOWN_KEEP, f"unknown means keep ({tail})"),
                 flags={Flag.STALE, Flag.KEPT_UNKNOWN}, **common)
