"""Every exception the monitor raises on purpose, in one tree.

Code catches the narrowest class it can handle; a caller that must survive any refusal (a
source loop, an HTTP handler) catches :class:`InputError`, never bare ``Exception``.

    MonitorError
    ├── InputError (ValueError): an input that cannot be applied; refused with a reason
    │   ├── BookError            the book was rejected whole (``.problems``)
    │   ├── AccountEventError    an account event was refused (``.reason``, for counting)
    │   ├── PretradeError        a pre-trade request is malformed (``.code``, ``.status``)
    │   ├── QueryError           a bad desk query parameter (HTTP 400)
    │   └── BadEvent             an alert the liquidator cannot act on
    ├── ConfigError (ValueError) a setting cannot be used; names the setting and why
    ├── SnapshotError (ValueError) a snapshot is corrupt, incompatible or of another book
    ├── ReportError (ValueError) the end-of-day report cannot be made
    ├── CalendarUnknown          a trading day is needed that the exchange calendar does not know
    ├── ControlError             a liquidator control request cannot be done
    ├── HookError                delivering a plan failed; retried with backoff
    │   └── PermanentHookError   the hook refused it for good; not retried
    ├── RepriceError             no fresh plan this time; retried with backoff
    │   └── PermanentRepriceError the monitor does not know the account
    ├── OutboundError            an outbound HTTP call got no answer (connect, TLS, timeout);
    │                            the webhook and the repricer turn it into their retried error
    └── Saturated                a benchmark phase could not keep up (ends the ramp)
"""

from __future__ import annotations

from typing import Any


class MonitorError(Exception):
    """The root: anything the monitor raises on purpose."""


class InputError(MonitorError, ValueError):
    """An input that cannot be applied; the message says why."""


class BookError(InputError):
    """The book was rejected; `.problems` lists why."""

    def __init__(self, problems: list[Any], source: str = "book"):
        self.problems = problems
        self.source = source
        shown = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: rejected with {len(problems)} problem(s):\n{shown}")


class AccountEventError(InputError):
    """The event was rejected; `reason` is a short code for counting, the message says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class PretradeError(InputError):
    """The request itself is wrong (HTTP 400, or 404 for an unknown account or symbol)."""

    def __init__(self, code: str, message: str, status: int = 400):
        super().__init__(message)
        self.code = code
        self.status = status


class QueryError(InputError):
    """A bad query parameter: answered with HTTP 400 and the message."""


class BadEvent(InputError):
    """An alert entry that cannot be acted on (malformed, or missing what a plan needs)."""


class ConfigError(MonitorError, ValueError):
    """The configuration cannot be used; the message says which setting and why."""


class SnapshotError(MonitorError, ValueError):
    """The snapshot cannot be used (corrupt, incompatible, of another book); says why."""


class ReportError(MonitorError, ValueError):
    """The report cannot be made; the message says what is missing."""


class CalendarUnknown(MonitorError):
    """A trading day is needed beyond the days the exchange calendar knows (`.day`, the first
    unknown day needed; `.first` / `.last`, the known range, as dates). Never guessed from
    weekdays: the operator adds the closures (docs/running.md#calendar)."""

    def __init__(self, day: Any, first: Any, last: Any):
        self.day, self.first, self.last = day, first, last
        super().__init__(f"the exchange calendar knows trading days {first} to {last}; {day} is "
                         f"needed: add that year's closures (closures / closures_file)")


class ControlError(MonitorError):
    """The request cannot be done (unknown event, not pending, kill switch on); the message
    says why."""


class HookError(MonitorError):
    """The hook failed; the worker retries with backoff (then dead-letters)."""


class PermanentHookError(HookError):
    """The hook refused the orders for good (a bad request, a bad signature): no retry."""


class RepriceError(MonitorError):
    """No fresh plan this time (retried with backoff, then dead-lettered)."""


class PermanentRepriceError(RepriceError):
    """The monitor does not know the account: retrying cannot help."""


class OutboundError(MonitorError):
    """No answer: connection refused or reset, a timeout, TLS or protocol failure. The text is
    ``<ExceptionType>: <detail>`` (``ConnectTimeout``, ``ReadTimeout``, ``ConnectError`` …)."""


class Saturated(MonitorError):
    """A benchmark phase did not drain in time; `.phase` is the phase."""

    def __init__(self, phase: Any):
        super().__init__(getattr(phase, "name", str(phase)))
        self.phase = phase
