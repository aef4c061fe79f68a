"""``python -m reaper explain LOCK_PATH``: the full chain of one decision.

Its rule and age, whether it is a candidate, which liveness checkers were asked
(and which did not apply), each answer with its evidence URLs, the combined
liveness and the decision, exactly as a run would take it now.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from ..aws import error_code
from ..decision import decide
from ..durations import format_duration
from ..liveness.composite import CompositeChecker, Detailed
from ..liveness.lease import LeaseChecker, lease_summary
from ..models import LockRecord
from ..policy.schema import Policy
from ..ports import LockStore


def find_locks(stores: list[LockStore], lock_path: str) -> tuple[list[LockRecord], list[str]]:
    """Every lock whose path (or store key) is ``lock_path``, and the stores that failed."""
    found: list[LockRecord] = []
    errors: list[str] = []
    for store in stores:
        try:
            store.validate()
            for lock in store.scan():
                if lock.lock_path == lock_path or lock.key == lock_path:
                    found.append(lock)
        except Exception as exc:
            errors.append(f"{store.name}: {type(exc).__name__}: {exc}")
    return found, errors


def explain_lock(lock: LockRecord, policy: Policy, liveness: CompositeChecker | None, now: datetime,
                 check_anyway: bool = False) -> dict[str, Any]:
    first = decide(lock, policy, now)
    detailed: Detailed | None = None
    final = first
    if liveness is not None and (first.needs_liveness or check_anyway):
        detailed = liveness.check_detailed(lock, now)
        if first.needs_liveness:
            final = decide(lock, policy, now, detailed.fact)
    info = lock.info
    rule = policy.rule_for(lock.lock_path, info.Operation) if info else None
    doc: dict[str, Any] = {
        "lock": {
            "store": lock.store, "key": lock.key, "lock_path": lock.lock_path,
            "id": info.ID if info else None, "operation": info.Operation if info else None,
            "who": info.Who if info else None, "version": info.Version if info else None,
            "created": info.Created.isoformat() if info else None, "parse_error": lock.parse_error,
        },
        "now": now.isoformat(),
        "age_seconds": first.age_seconds,
        "rule": None if rule is None else {
            "name": rule.label, "max_age": format_duration(rule.max_age),
            "hard_max_age": format_duration(rule.hard_max_age) if rule.hard_max_age else None,
            "liveness_mapping": rule.liveness.model_dump(mode="json") if rule.liveness else None,
        },
        "candidate": first.needs_liveness,
        "checkers_asked": list(detailed.fact.checkers) if detailed else [],
        "not_applicable": list(detailed.skipped) if detailed else [],
        "answers": [
            {"checker": a.checker, "state": a.fact.state.value, "reason": a.fact.reason,
             "evidence": [e.model_dump(mode="json") for e in a.fact.evidence]}
            for a in (detailed.answers if detailed else [])
        ],
        "liveness": None if detailed is None else {"state": detailed.fact.state.value, "reason": detailed.fact.reason},
        "decision": {"action": final.action.value, "reasons": list(final.reasons), "flags": sorted(f.value for f in final.flags)},
        "mode": policy.mode,
    }
    lease = _lease(lock, liveness) if detailed is not None else None
    if lease is not None:
        doc["lease"] = lease
    if liveness is not None:
        doc["api_calls"] = liveness.stats()
    return doc


def _lease(lock: LockRecord, liveness: CompositeChecker | None) -> dict[str, Any] | None:
    """The lease of the lock's claim and the reaper's observations of it (read, never recorded)."""
    for checker in liveness.checkers if liveness is not None else []:
        if isinstance(checker, LeaseChecker):
            try:
                claim, seen = checker.observation(lock)
            except Exception as exc:
                return {"error": f"cannot read the lease: {error_code(exc)}"}
            return lease_summary(claim, seen) if claim is not None and claim.lease is not None else None
    return None


def _render_lease(doc: dict[str, Any]) -> list[str]:
    if "error" in doc:
        return [f"lease      {doc['error']}"]
    out = [f"lease      {doc['summary']}"]
    obs = doc.get("observations") or {}
    if obs.get("store") == "none":
        out.append(f"seen       nothing kept: {obs['why_none']}")
    elif obs.get("store") == "error":
        out.append(f"seen       the observations store failed ({obs['error']})")
    elif obs.get("counter") is None:
        out.append("seen       never by the reaper (the next run records its first sighting)")
    else:
        by = f" by {obs['observer']}" if obs.get("observer") else ""
        ended = f"; exit first seen {obs['ended_seen_at']}" if obs.get("ended_seen_at") else ""
        out.append(f"seen       counter {obs['counter']} first seen {obs['first_seen_at']}{by}{ended}")
    return out


def render(doc: dict[str, Any]) -> str:
    lk = doc["lock"]
    out = [f"lock       {lk['lock_path']}  ({lk['store']}, key {lk['key']})"]
    if lk["id"] is None:
        out.append(f"info       unparseable: {lk['parse_error']}")
    else:
        out.append(f"id         {lk['id']}  operation {lk['operation'] or '-'}  version {lk['version'] or '-'}")
        out.append(f"who        {lk['who']}")
        age = format_duration(doc["age_seconds"]) if doc["age_seconds"] is not None else "-"
        out.append(f"created    {lk['created']}  (age {age} at {doc['now']})")
    r = doc["rule"]
    if r is None:
        out.append("rule       none matches")
    else:
        hard = f", hard_max_age {r['hard_max_age']}" if r["hard_max_age"] else ", no hard_max_age"
        out.append(f"rule       {r['name']}: max_age {r['max_age']}{hard}")
    out.append(f"candidate  {'yes: past max_age, liveness asked' if doc['candidate'] else 'no: liveness is not asked'}")
    if doc["answers"] or doc["not_applicable"]:
        asked = ", ".join(doc["checkers_asked"]) or "none"
        na = f" (not applicable: {', '.join(doc['not_applicable'])})" if doc["not_applicable"] else ""
        out.append(f"checkers   {asked}{na}")
        for a in doc["answers"]:
            out.append(f"  {a['checker']:<15} {a['state']:<8} {a['reason']}")
            for e in a["evidence"]:
                bits = [e["detail"]]
                if e.get("status"):
                    bits.append(f"[{e['status']}]")
                if e.get("at"):
                    bits.append(f"at {e['at']}")
                out.append(f"  {'':<15}   - {' '.join(bits)}")
                if e.get("url"):
                    out.append(f"  {'':<15}     {e['url']}")
    if doc.get("lease"):
        out.extend(_render_lease(doc["lease"]))
    if doc["liveness"]:
        out.append(f"liveness   {doc['liveness']['state']}")
    d = doc["decision"]
    out.append(f"decision   {d['action'].upper()}" + (f"  (flags: {', '.join(d['flags'])})" if d["flags"] else ""))
    for reason in d["reasons"]:
        out.append(f"           - {reason}")
    if d["action"] == "reap" and doc["mode"] != "enforce":
        out.append("           (the policy is in report mode: a run would report it, not delete it)")
    calls = doc.get("api_calls") or {}
    if calls.get("total"):
        out.append(f"api calls  {calls['total']} ({', '.join(f'{k} {v}' for k, v in calls['by_kind'].items())})")
    return "\n".join(out)


def to_json(docs: list[dict[str, Any]]) -> str:
    return json.dumps(docs[0] if len(docs) == 1 else docs, indent=2)
