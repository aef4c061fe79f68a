"""Combine the checkers' answers into one fact for the decision.

- any checker says alive -> **alive** (one live signal is enough to keep, over an
  authoritative dead too: a fresh lease beats a CI API that says the job completed);
- otherwise, an authoritative proof of death (one that does not rest on the
  lock's ``Created``: an idle runner named after the host, a claim of a
  single-use GitHub-hosted VM) -> **dead**;
- otherwise, a contested unknown (a live or just-finished job or run that could
  be the holder if the holder's clock lags) -> **unknown**, whatever else says dead;
- otherwise, at least one positive proof of death -> **dead**;
- otherwise -> **unknown** (which means keep).

Every answer's evidence is kept, and the fact names the checkers that were
asked. A checker is a ``reaper.ports.Checker``: a ``name``, ``applies(lock)``
(False: skipped, not asked) and ``check(lock, now)``, which may still return
``None`` for "not applicable". An exception from one checker is an unknown answer
from it, never a dead one. The wiring adds a store's own checker (HCP Terraform
run status) with ``register``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..aws import error_code
from ..models import Evidence, Liveness, LivenessFact, LockRecord
from ..ports import Checker, ClaimVerifier
from .claims import ClaimStore
from .facts import ev, unknown
from .identity import parse_who

if TYPE_CHECKING:
    from ..http.client import ApiCounter

log = logging.getLogger("reaper.liveness")


@dataclass
class Answer:
    checker: str
    fact: LivenessFact


@dataclass
class Detailed:
    fact: LivenessFact
    answers: list[Answer] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not applicable to this lock


class CompositeChecker:
    def __init__(self, checkers: list[Checker] | None = None, counter: ApiCounter | None = None):
        self.checkers: list[Checker] = list(checkers or [])
        self.counter = counter

    def register(self, checker: Checker, first: bool = False) -> None:
        if first:
            self.checkers.insert(0, checker)
        else:
            self.checkers.append(checker)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.checkers]

    def stats(self) -> dict[str, Any]:
        """API calls made so far (per kind and status), for the run report and the benchmark."""
        return self.counter.to_dict() if self.counter is not None else {}

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact:
        return self.check_detailed(lock, now).fact

    def check_detailed(self, lock: LockRecord, now: datetime) -> Detailed:
        answers: list[Answer] = []
        skipped: list[str] = []
        for checker in self.checkers:
            name = checker.name
            try:
                if not checker.applies(lock):
                    skipped.append(name)
                    continue
                result = checker.check(lock, now)
            except Exception as exc:  # one broken checker is an unknown answer, never a dead one
                log.warning("liveness checker %s failed on %s: %s", name, lock.key, type(exc).__name__)
                detail = f"checker failed: {type(exc).__name__}"
                result = unknown(name, detail, ev(name, detail, status="error"))
            if result is None:
                skipped.append(name)
                continue
            answers.append(Answer(name, result))
        return Detailed(fact=combine(answers), answers=answers, skipped=skipped)


def combine(answers: list[Answer]) -> LivenessFact:
    """Any alive means alive. Otherwise an authoritative dead (one that does not rest on the lock's
    ``Created``) means dead. Otherwise a contested unknown (a live or just-finished job or run that could be
    the holder) means unknown, whatever else says dead. Otherwise one dead means dead; else unknown."""
    asked = tuple(dict.fromkeys(a.checker for a in answers))
    evidence: tuple[Evidence, ...] = tuple(e for a in answers for e in a.fact.evidence)

    def joined(chosen: list[Answer]) -> str:
        return "; ".join(f"{a.checker}: {a.fact.reason}" for a in chosen)

    alive = [a for a in answers if a.fact.state is Liveness.ALIVE]
    dead = [a for a in answers if a.fact.state is Liveness.DEAD]
    firm = [a for a in dead if a.fact.authoritative]
    disputed = [a for a in answers if a.fact.state is Liveness.UNKNOWN and a.fact.contested]
    if alive:
        return LivenessFact(state=Liveness.ALIVE, reason=joined(alive), evidence=evidence, checkers=asked)
    if firm:
        return LivenessFact(state=Liveness.DEAD, reason=joined(firm), evidence=evidence, checkers=asked, authoritative=True)
    if disputed:
        reason = joined(disputed) + (f" (outvotes {joined(dead)}: that proof rests on the lock's Created)" if dead else "")
        return LivenessFact(state=Liveness.UNKNOWN, reason=reason, evidence=evidence, checkers=asked, contested=True)
    if dead:
        return LivenessFact(state=Liveness.DEAD, reason=joined(dead), evidence=evidence, checkers=asked)
    if not answers:
        return LivenessFact(state=Liveness.UNKNOWN, reason="no liveness evidence applies to this lock "
                            "(no claim table, runner mapping, repo/project mapping or state object)", checkers=asked)
    unknown_ = [a for a in answers if a.fact.state is Liveness.UNKNOWN]
    return LivenessFact(state=Liveness.UNKNOWN, reason=joined(unknown_), evidence=evidence, checkers=asked)


class ClaimsChecker:
    """Join the lock to the latest claim by the same ``Who`` made before ``Created``,
    then ask that claim's provider (matched by API URL) about the run/job."""

    name = "claims"

    def __init__(self, store: ClaimStore, verifiers: dict[str, ClaimVerifier], api_urls: dict[str, str]):
        self.store = store
        self.verifiers = verifiers  # provider label -> its verifier
        self.api_urls = api_urls  # provider label -> normalised api_url

    def _verifier(self, provider: str, api_url: str | None) -> tuple[ClaimVerifier, str] | None:
        want = (api_url or "").rstrip("/").lower()
        same_type = [(label, v) for label, v in self.verifiers.items() if v.provider_type == provider]
        for label, v in same_type:
            if want and self.api_urls.get(label, "").lower() == want:
                return v, label
        if not want and len(same_type) == 1:
            return same_type[0][1], same_type[0][0]
        return None

    def applies(self, lock: LockRecord) -> bool:
        return lock.info is not None

    def check(self, lock: LockRecord, now: datetime) -> LivenessFact | None:
        if lock.info is None:
            return None
        src = self.name
        who, created = lock.info.Who, lock.info.Created
        try:
            claim = self.store.latest(who, created)
        except Exception as exc:
            detail = f"claims table query failed ({error_code(exc)})"
            return unknown(src, detail, ev(src, detail, f"dynamodb://{self.store.table}", "error"))
        if claim is None:
            detail = f"no claim by {who!r} made before the lock was created"
            return unknown(src, detail, ev(src, detail, f"dynamodb://{self.store.table}", "no-claim"))
        if claim.provider == "none":  # a run outside GitHub Actions and GitLab CI: only its lease speaks for it
            return None
        found = self._verifier(claim.provider, claim.api_url)
        if found is None:
            detail = (f"claim {claim.describe()} is for {claim.provider} at {claim.api_url or '(no api url)'}, "
                      f"which no configured provider serves")
            return unknown(src, detail, ev(src, detail, claim.url, "no-provider", claim.claimed_at))
        verifier, label = found
        fact = verifier.verify(claim, lock, now)
        note = ev(src, f"claim by {who}: {claim.describe()} (provider {label})", claim.url, "claimed", claim.claimed_at)
        # A GitHub-hosted VM runs one job: the claim by its exact Who names the only job that ever ran there,
        # whatever the host's clock says. On any other host the claim is joined by time (ClaimedAt <= Created).
        single_use = fact.state is Liveness.DEAD and parse_who(who).github_hosted
        return LivenessFact(state=fact.state, reason=fact.reason, evidence=(note, *fact.evidence), checkers=(src,),
                            authoritative=single_use)
