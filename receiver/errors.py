"""The receiver's exception tree; subclasses are split by what the caller does next.

ReceiverError
├── RejectError                 reject the input (4xx to our caller, nothing recorded)
│   ├── InputError              a request body or field is invalid (422)
│   ├── NotFoundError           no such job or route (404)
│   ├── ConflictError           the request contradicts the current state (409)
│   ├── AuthError               missing or wrong bearer token (401)
│   ├── PayloadTooLargeError    body over the cap (413)
│   ├── UnsupportedMediaTypeError  body is not JSON (415)
│   └── SignatureError          a webhook failed verification (400/401/403)
├── RetryLaterError             transient; try again after `retry_after_s` (503 on a request path)
│   └── VerificationUnavailable no key material to verify with (JWKS down, nothing cached)
├── GiveUpError                 the provider rejected the job for good: fail it with this message
├── SealedSecretError           a stored credential does not open with the configured keys (503)
└── AmbiguousError              a call may have reached the provider; retrying could duplicate it
"""

from __future__ import annotations


class ReceiverError(Exception):
    """Root of every error the receiver raises on purpose."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class RejectError(ReceiverError):
    status_code = 400
    code = "bad_request"


class InputError(RejectError):
    status_code = 422
    code = "invalid_input"


class NotFoundError(RejectError):
    status_code = 404
    code = "not_found"


class ConflictError(RejectError):
    status_code = 409
    code = "conflict"


class UnsupportedMediaTypeError(RejectError):
    status_code = 415
    code = "unsupported_media_type"


class AuthError(RejectError):
    status_code = 401
    code = "unauthorized"


class PayloadTooLargeError(RejectError):
    status_code = 413
    code = "payload_too_large"


class SignatureError(RejectError):
    """A webhook that does not verify. `code` says why (missing_header, stale_timestamp, ...)."""

    status_code = 401
    code = "invalid_signature"

    def __init__(self, message: str, *, code: str = "invalid_signature", status_code: int = 401) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code


class RetryLaterError(ReceiverError):
    status_code = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after_s: float | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class VerificationUnavailable(RetryLaterError):
    code = "verification_unavailable"


class DeferredError(RetryLaterError):
    code = "deferred"


class GiveUpError(ReceiverError):
    """The provider refused the work for good; `code`, message and the provider's request id (when the
    refusal carried one) go onto the failed job."""

    status_code = 502
    code = "provider_error"

    def __init__(self, message: str, *, code: str | None = None, request_id: str | None = None) -> None:
        super().__init__(message, code=code)
        self.request_id = request_id


class SealedSecretError(ReceiverError):
    """A credential sealed at rest that no configured key opens (a missing RECEIVER_OLD_SECRET_KEYS entry)."""

    status_code = 503
    code = "secret_unreadable"


class AmbiguousError(ReceiverError):
    """The request may or may not have been processed by the provider: it is never resent, since that
    could start (and bill) the same work twice."""

    status_code = 502
    code = "provider_outcome_unknown"
    NOT_RESENT = "not resent, to avoid a duplicate paid job"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        if "not resent" not in message:
            message = f"{message}; {self.NOT_RESENT}"
        super().__init__(message, code=code)
