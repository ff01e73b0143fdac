"""One provider call through an official SDK's own request path, with a body the caller already built.

The SDKs' typed methods (``chat.completions.create``, ``messages.create``) walk every request through
their TypedDict transform and build a typed model from every response. Our requests are validated
``JobSpec`` fields turned into plain JSON, and we read four fields of the answer, so both steps are pure
cost: about a third of the CPU of a call. ``client.post`` is the SDKs' documented way to send a request
they have no method for; it keeps everything else the SDK does on a call (auth headers, base URL, the
timeout, the connection pool, status errors raised as the SDK's own exceptions).
"""

from __future__ import annotations

import json
from typing import Any, Protocol


class _PostingClient(Protocol):
    def post(self, path: str, *, cast_to: Any, body: Any = ..., options: Any = ...) -> Any: ...


def post_json(client: _PostingClient, path: str, body: dict[str, Any], *, timeout: float) -> Any:
    """POST ``body`` as JSON to ``path`` on the SDK client; the decoded JSON answer. Raises the SDK's
    errors for a status error or a failed connection, ``ValueError`` for an answer that is not JSON."""
    raw = client.post(path, cast_to=bytes, body=body, options={"timeout": timeout})
    return json.loads(raw)
