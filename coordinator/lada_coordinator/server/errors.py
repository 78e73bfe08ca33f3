"""The one exception every refusal of the HTTP API raises, and the reply it becomes."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from lada_client.common.wire import ErrorBody


class ApiError(Exception):
    """A refused request: HTTP status, error code (``ErrorBody.error``) and a detail a user can act on.

    ``last_seq`` / ``server_time`` are only ever set on answers to authenticated requests."""

    def __init__(
        self,
        status: int,
        error: str,
        detail: str,
        last_seq: int | None = None,
        server_time: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail
        self.last_seq, self.server_time, self.headers = last_seq, server_time, headers

    def response(self) -> JSONResponse:
        body = ErrorBody(error=self.error, detail=self.detail, last_seq=self.last_seq, server_time=self.server_time)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=self.status, headers=self.headers)
