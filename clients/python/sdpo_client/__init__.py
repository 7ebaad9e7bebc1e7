"""Python SDK for sdpo-service. It speaks HTTP only and imports nothing of the server.

from sdpo_client import Client, problems

with Client("http://127.0.0.1:8000", api_key="sdpo_...") as client:
    p = client.submit(problems.from_table("Table 1234. Give q.", {"q": "7"}))
    for event in client.events(p.id):
        print(event.kind, event)
    print(client.wait(p.id).solution)
"""

from sdpo_client import problems
from sdpo_client.client import DEFAULT_SERVER, AsyncClient, Client
from sdpo_client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    SdpoError,
    ServerError,
    ServiceUnavailableError,
    ValidationError,
    WaitTimeoutError,
)
from sdpo_client.models import (
    TERMINAL_STATUSES,
    AnyEvent,
    Attempt,
    AttemptEvent,
    Budget,
    CancelledEvent,
    Event,
    ExhaustedEvent,
    FailedEvent,
    Problem,
    ProblemSpec,
    SolvedEvent,
    Status,
    StatusEvent,
    StepEvent,
    Suite,
    UnknownEvent,
    Verdict,
)

__version__ = "0.1.0"
__all__ = [
    "DEFAULT_SERVER",
    "TERMINAL_STATUSES",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AnyEvent",
    "AsyncClient",
    "Attempt",
    "AttemptEvent",
    "AuthenticationError",
    "BadRequestError",
    "Budget",
    "CancelledEvent",
    "Client",
    "ConflictError",
    "Event",
    "ExhaustedEvent",
    "FailedEvent",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Problem",
    "ProblemSpec",
    "RateLimitError",
    "SdpoError",
    "ServerError",
    "ServiceUnavailableError",
    "SolvedEvent",
    "Status",
    "StatusEvent",
    "StepEvent",
    "Suite",
    "UnknownEvent",
    "ValidationError",
    "Verdict",
    "WaitTimeoutError",
    "problems",
]
