"""Domain models: what a lock is, what we know about its holder, what we decided.

Nothing here does I/O or imports boto3.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, field_validator, model_serializer
from pydantic_core import core_schema

# Terraform writes Created with time.Now().UTC() in RFC 3339 with 0..9 fractional
# digits. Python's datetime keeps microseconds, so extra digits are truncated.
# Found by tests/test_fuzz.py: re.ASCII, as \d also matches other scripts' digits ("\u0662\u0660\u0662\u0666"
# parsed as 2026), and \Z, as $ also matches before a trailing newline.
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|z|[+-]\d{2}:\d{2})\Z", re.ASCII
)

DIGEST_SUFFIX = "-md5"


def claim_time(at: datetime) -> str:
    """RFC 3339 UTC with exactly 6 fractional digits: sortable as a string (claims and leases)."""
    if at.tzinfo is None:
        raise ValueError("claim times must be timezone-aware")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_created(value: str) -> datetime:
    """Parse Terraform's ``Created`` (RFC 3339, up to nanoseconds) into an aware UTC datetime."""
    m = _RFC3339.match(value)
    if not m:
        raise ValueError(f"Created {value[:64]!r} is not an RFC 3339 timestamp")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    micro = int((frac or "0").ljust(6, "0")[:6])
    if tz in ("Z", "z"):
        tzinfo = UTC
    else:
        sign = 1 if tz[0] == "+" else -1
        hh, mm = int(tz[1:3]), int(tz[4:6])
        if hh > 23 or mm > 59:
            raise ValueError(f"Created {value[:64]!r} has an invalid UTC offset {tz}")
        tzinfo = timezone(sign * timedelta(hours=hh, minutes=mm))
    dt = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tzinfo)
    try:
        return dt.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before datetime.min in UTC
        raise ValueError(f"Created {value[:64]!r} is out of range") from None


class LockInfo(BaseModel):
    """Terraform's LockInfo JSON (statemgr.LockInfo), as stored in ``Info``."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    ID: str = Field(min_length=1, max_length=256)
    Operation: str = Field(default="", max_length=256)  # unknown operations are accepted
    Info: str = ""
    Who: str = Field(min_length=1, max_length=1024)
    Version: str = Field(default="", max_length=256)
    Created: datetime
    Path: str = Field(min_length=1, max_length=2048)

    @field_validator("Created", mode="before")
    @classmethod
    def _created(cls, v: Any) -> datetime:
        if not isinstance(v, str):
            raise ValueError(f"Created must be a string, got {type(v).__name__}")
        return parse_created(v)

    @classmethod
    def parse(cls, raw: str) -> LockInfo:
        """Parse the raw Info string; raises ValueError with a short reason."""
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ValueError(f"Info is not valid JSON ({exc.__class__.__name__}: {str(exc)[:80]})") from None
        if not isinstance(data, dict):
            raise ValueError(f"Info is JSON {type(data).__name__}, expected an object")
        try:
            return cls.model_validate(data)
        except Exception as exc:  # pydantic.ValidationError
            errors = getattr(exc, "errors", None)
            if callable(errors):
                parts = [f"{'.'.join(str(p) for p in e['loc']) or 'Info'}: {e['msg']}" for e in errors()[:4]]
                raise ValueError("Info fields invalid: " + "; ".join(parts)) from None
            raise ValueError(f"Info invalid: {exc}") from None


class LockRecord(BaseModel):
    """One lock as found in a store, with the exact token its conditional delete needs.

    ``info`` is None when the Info could not be parsed; ``parse_error`` says why.
    ``raw`` is the original item, JSON-serialisable, as the audit record keeps it.
    """

    model_config = ConfigDict(frozen=True)

    store: str  # e.g. "dynamodb:terraform-locks"
    key: str  # the store's own key (DynamoDB LockID, S3 object key, ...)
    lock_path: str  # what Info.Path must equal ("<bucket>/<state key>")
    token: str  # DynamoDB: raw Info string; S3: ETag
    raw: dict[str, Any]
    info: LockInfo | None = None
    parse_error: str | None = None

    @property
    def lock_id(self) -> str:
        return self.info.ID if self.info else ""


class Liveness(str, Enum):
    ALIVE = "alive"
    DEAD = "dead"
    UNKNOWN = "unknown"


class Evidence(BaseModel):
    model_config = ConfigDict(frozen=True)

    source: str  # which checker, e.g. "github", "state-activity"
    detail: str
    url: str | None = None
    status: str | None = None
    at: datetime | None = None


class LivenessFact(BaseModel):
    """What the checkers proved about a lock's holder.

    Two marks let the composite checker weigh answers that rest on the lock's
    ``Created``, which the holder's own (possibly wrong) clock wrote:

    - ``contested`` (on unknown): a job or run that could be this lock's holder is
      live, or finished within the grace period, but could not be tied to the lock
      (e.g. it started "after" a ``Created`` that a lagging host clock wrote). Only an
      authoritative answer may then call the holder dead.
    - ``authoritative`` (on dead): the proof does not rest on ``Created`` or on the
      holder's clock: an idle self-hosted runner named after the host, or the claim of
      a single-use host (a GitHub-hosted VM runs one job).
    """

    model_config = ConfigDict(frozen=True)

    state: Liveness
    reason: str
    evidence: tuple[Evidence, ...] = ()
    checkers: tuple[str, ...] = ()
    contested: bool = False
    authoritative: bool = False

    @classmethod
    def unknown(cls, reason: str, checkers: tuple[str, ...] = ()) -> LivenessFact:
        return cls(state=Liveness.UNKNOWN, reason=reason, checkers=checkers)


class Action(str, Enum):
    KEEP = "keep"
    REAP = "reap"


class Flag(str, Enum):
    """Conditions worth alerting on, independent of keep/reap."""

    UNPARSEABLE = "unparseable"
    FUTURE_CREATED = "future_created"
    PATH_MISMATCH = "path_mismatch"
    ALIVE_PAST_HARD_MAX = "alive_past_hard_max"
    STALE = "stale"  # past max_age
    KEPT_UNKNOWN = "kept_unknown"  # a candidate kept because liveness is unknown
    NO_RULE = "no_rule"
    EXCLUDED = "excluded"
    # a lock held in two stores (double locking) was deleted from the first but not
    # the second: the state stays locked (set by the engine, never by the decision)
    DOUBLE_LOCK_PARTIAL = "double_lock_partial"
    # a lock that would have been reaped was kept because the run's delete cap was
    # reached (set by the engine; RunReport.finalize turns it into summary.cap_hit)
    CAP_HIT = "cap_hit"


class ReasonCode(str, Enum):
    """What a reason says, for code that selects reasons (the report's main reason, the demo)."""

    # the decision (reaper/decision.py)
    UNPARSEABLE = "unparseable"
    PATH_MISMATCH = "path_mismatch"
    FUTURE_CREATED = "future_created"
    EXCLUDED = "excluded"
    NO_RULE = "no_rule"
    BELOW_MIN_AGE = "below_min_age"
    BELOW_MAX_AGE = "below_max_age"
    STALE = "stale"  # age >= max_age
    NOT_CHECKED = "not_checked"  # liveness not asked yet
    HOLDER_ALIVE = "holder_alive"
    HOLDER_DEAD = "holder_dead"
    HOLDER_UNKNOWN = "holder_unknown"
    NEVER_WHILE_ALIVE = "never_while_alive"
    PAST_HARD_MAX_ALERT = "past_hard_max_alert"  # alive past hard_max_age: an alert note
    HARD_MAX_ALLOWS = "hard_max_allows"
    UNKNOWN_KEEP = "unknown_keep"
    # the engine (reaper/engine.py, reaper/pairing.py)
    DOUBLE_LOCK = "double_lock"  # held in two stores: one lock, one decision
    REPORT_MODE = "report_mode"
    CAP_REACHED = "cap_reached"
    DELETE_REFUSED = "delete_refused"  # the store cannot delete safely (StoreTraits.delete_refused)
    NO_AUDIT = "no_audit"
    AUDIT_FAILED = "audit_failed"
    DELETED = "deleted"
    RACED = "raced"
    GONE = "gone"
    DELETE_FAILED = "delete_failed"
    COPY_RESULT = "copy_result"  # "<store>: <what its delete did>", one per copy of a double lock
    LEFT_ALONE = "left_alone"  # the second copy was not touched
    HALF_RELEASED = "half_released"
    INTERNAL_ERROR = "internal_error"
    OTHER = "other"  # a reason read back without its code that matches no known text


# How reasons written without a code (JSON from before codes, hand-made entries) are
# recognised: the beginning of each text this code base writes. Only read back, never used
# for reasons made here, which carry their code.
_TEXT_CODES: tuple[tuple[str, ReasonCode], ...] = (
    ("unparseable lock: ", ReasonCode.UNPARSEABLE),
    ("Info.Path ", ReasonCode.PATH_MISMATCH),
    ("Created ", ReasonCode.FUTURE_CREATED),
    ("excluded by ", ReasonCode.EXCLUDED),
    ("no rule matches ", ReasonCode.NO_RULE),
    ("holder liveness not checked yet", ReasonCode.NOT_CHECKED),
    ("holder alive: ", ReasonCode.HOLDER_ALIVE),
    ("holder dead: ", ReasonCode.HOLDER_DEAD),
    ("holder unknown: ", ReasonCode.HOLDER_UNKNOWN),
    ("never reaped while the holder is alive", ReasonCode.NEVER_WHILE_ALIVE),
    ("age is past ", ReasonCode.PAST_HARD_MAX_ALERT),
    ("age >= hard_max_age ", ReasonCode.HARD_MAX_ALLOWS),
    ("unknown means keep", ReasonCode.UNKNOWN_KEEP),
    ("held in ", ReasonCode.DOUBLE_LOCK),
    ("report mode: not deleted", ReasonCode.REPORT_MODE),
    ("cap of ", ReasonCode.CAP_REACHED),
    ("store cannot delete safely", ReasonCode.DELETE_REFUSED),
    ("no audit sink is configured", ReasonCode.NO_AUDIT),
    ("audit write failed", ReasonCode.AUDIT_FAILED),
    ("deleted (", ReasonCode.DELETED),
    ("delete failed: ", ReasonCode.DELETE_FAILED),
    ("nothing was deleted: ", ReasonCode.LEFT_ALONE),
    ("DOUBLE LOCK HALF RELEASED", ReasonCode.HALF_RELEASED),
    ("internal error: ", ReasonCode.INTERNAL_ERROR),
)
_AGE = re.compile(r"^age .+? (is below the min_age floor|is below max_age|>= max_age) ")
_AGE_CODES = {"is below the min_age floor": ReasonCode.BELOW_MIN_AGE, "is below max_age": ReasonCode.BELOW_MAX_AGE,
              ">= max_age": ReasonCode.STALE}


class Reason(str):
    """One reason of a decision or an outcome: its text, as reports print it, and its ``code``.

    A ``str``, so it prints, compares and serialises as its text (JSON stays a list of
    strings); code that selects reasons reads ``code`` instead of matching the text.
    """

    code: ReasonCode

    def __new__(cls, code: ReasonCode, text: str) -> Reason:
        self = super().__new__(cls, text)
        self.code = code
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (Reason, (self.code, str(self)))

    @classmethod
    def read(cls, text: str) -> Reason:
        """A reason read back without its code: coded from its text (ReasonCode.OTHER if unknown)."""
        if isinstance(text, Reason):
            return text
        m = _AGE.match(text)
        if m:
            return cls(_AGE_CODES[m.group(1)], text)
        code = next((c for prefix, c in _TEXT_CODES if text.startswith(prefix)), ReasonCode.OTHER)
        return cls(code, text)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        # a string in JSON and in model_dump; a Reason keeps its code, a plain string is coded by ``read``
        return core_schema.no_info_wrap_validator_function(
            lambda v, inner: v if isinstance(v, Reason) else cls.read(inner(v)),
            core_schema.str_schema(),
            serialization=core_schema.plain_serializer_function_ser_schema(str, when_used="always"),
        )


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    action: Action
    reasons: tuple[Reason, ...]
    rule: str | None = None
    age_seconds: float | None = None
    needs_liveness: bool = False
    flags: frozenset[Flag] = frozenset()


class Outcome(str, Enum):
    KEPT = "kept"
    WOULD_REAP = "would_reap"
    REAPED = "reaped"
    RACED = "raced"
    GONE = "gone"
    ERROR = "error"


class DeleteStatus(str, Enum):
    DELETED = "deleted"
    RACED = "raced"
    GONE = "gone"


class DeleteResult(BaseModel):
    """Result of a conditional delete. RACED and GONE are normal outcomes."""

    model_config = ConfigDict(frozen=True)

    status: DeleteStatus
    detail: str = ""
    current_id: str | None = None
    current_who: str | None = None


# The audit record's format; ``restore`` refuses any other (reaper/audit.py).
AUDIT_SCHEMA = 1


class DoubleLockCopies(BaseModel):
    """In the audit record of one copy of a double lock: both copies, and this one's place."""

    stores: list[str]
    keys: list[str]
    delete_order: int  # 1 for the lock file (deleted first), 2 for the item


class AuditRecord(BaseModel):
    """What is recorded about one lock (one copy) before it is deleted; ``restore`` reads it back.

    ``model_dump(mode="json")`` is the JSON the audit sinks store, with the keys records have
    always had: ``restore_note`` and ``double_lock`` appear only when set.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    schema_: int = Field(default=AUDIT_SCHEMA, alias="schema")  # "schema" would shadow BaseModel.schema
    run_id: str
    recorded_at: str  # datetime.isoformat(), as records have always been written
    store: str
    key: str
    lock_path: str
    lock_id: str
    item: dict[str, Any]  # the original item: what restore writes back
    token: str
    info: LockInfo | None
    decision: Action
    rule: str | None
    age_seconds: float | None
    reasons: list[str]
    liveness: LivenessFact | None
    restorable: bool
    restore_note: str | None = None
    double_lock: DoubleLockCopies | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_extras(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        for optional in ("restore_note", "double_lock"):
            if out.get(optional) is None:
                out.pop(optional, None)
        return out
