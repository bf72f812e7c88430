"""A request's image bytes: the raw body, or the one file of a multipart upload, read with a
cap so that no client can make the service hold more than `max_bytes` (plus a little)."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request

from feddymem.serve.decode import BadImage

_MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file


async def _capped_body(request: Request, *, cap: int, max_bytes: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise BadImage(400, "invalid Content-Length header") from None
        if declared > cap:
            raise BadImage(413, f"body over the size cap of {max_bytes} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise BadImage(413, f"body over the size cap of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_image_bytes(request: Request, *, max_bytes: int) -> tuple[bytes, str | None]:
    """(image bytes, the upload's file name if multipart)."""
    multipart = request.headers.get("content-type", "").startswith("multipart/form-data")
    cap = max_bytes + _MULTIPART_SLACK if multipart else max_bytes
    body = await _capped_body(request, cap=cap, max_bytes=max_bytes)
    if not multipart:
        return body, None

    async def replay() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    parsed = Request(request.scope, receive=replay)
    try:
        form = await parsed.form(max_files=1, max_fields=8)
    except Exception as err:  # malformed multipart: python-multipart / Starlette errors
        raise BadImage(400, f"malformed multipart body: {err}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise BadImage(400, "multipart body without a file part")
        data = await files[0].read()
        return data, files[0].filename
    finally:
        await form.close()
