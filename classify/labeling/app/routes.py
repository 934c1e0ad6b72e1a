"""The HTTP interface of the labeling app (Starlette): the page, its JSON API and the thumbnails.

==========================  ====================================================================================
``GET /``                   the page (``static/index.html``: plain HTML and JavaScript, nothing fetched from
                            elsewhere); ``#audit`` shows the audit view
``GET /api/state``          what the page shows (:meth:`LabelSession.view`): classes, batch, accuracy, busy
``POST /api/answer``        ``{"id": ..., "label": ..., "new_class": false}``: saved before the reply
``POST /api/skip``          ``{"id": ...}``
``POST /api/undo``          ``{}``: revert this app's last answer (the answers CSV gets a line saying so)
``GET /api/audit``          ``?offset=0&limit=24&refresh=0``: a page of suspected wrong labels
``POST /api/keep``          ``{"id": ...}``: keep a suspected label (fixing it is an answer)
``GET /thumb/{row}``        the JPEG thumbnail of store row ``row``
==========================  ====================================================================================

Bad input is one line: ``{"error": "..."}`` with 400 (a malformed request or an unknown class), 404 (an unknown
image), 409 (the store refused the write, e.g. another process holds it) or 415 (a POST that is not JSON: a page
of another site cannot send one, so it cannot answer for the user).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from classify.labeling.app.data import UnknownImage
from classify.labeling.app.session import LabelSession, StoreRefused
from store.validation import UserError, one_line

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


class Json(JSONResponse):
    """JSON with every non-ASCII character escaped: ids that are not UTF-8 (surrogates) survive the round trip."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error(message: str, status: int) -> Json:
    return Json({"error": one_line(message)}, status_code=status)


def status_of(err: UserError) -> int:
    """The HTTP status of a refused request."""
    if isinstance(err, UnknownImage):
        return 404
    if isinstance(err, StoreRefused):
        return 409
    return 400


def is_json(request: Request) -> bool:
    """Whether a request says it carries JSON (what a form or a plain request of another site cannot say)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


async def body(request: Request) -> dict:
    """The JSON object a POST carries; a UserError for anything else."""
    try:
        data = json.loads(await request.body())
    except ValueError:
        raise UserError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise UserError('the request body must be a JSON object such as {"id": "...", "label": "..."}')
    return data


def create_app(session: LabelSession, allowed_hosts: list[str] | None = None) -> Starlette:
    """The Starlette app of a session.

    Parameters
    ----------
    session : LabelSession
    allowed_hosts : list of str, optional
        Host names requests may name (``Host`` header; refuses DNS rebinding); None accepts any.
    """
    async def post(request: Request, action) -> Response:
        if not is_json(request):
            return error("send the request as JSON (Content-Type: application/json)", 415)
        try:
            return Json(await run_in_threadpool(action, await body(request)))
        except UserError as err:
            return error(str(err), status_of(err))

    async def answer(request: Request) -> Response:
        return await post(request, lambda d: session.answer(d.get("id"), d.get("label"), bool(d.get("new_class"))))

    async def skip(request: Request) -> Response:
        return await post(request, lambda d: session.skip(d.get("id")))

    async def undo(request: Request) -> Response:
        return await post(request, lambda d: session.undo())

    async def keep(request: Request) -> Response:
        return await post(request, lambda d: session.keep(d.get("id")))

    def state(request: Request) -> Response:
        return Json(session.view())

    def audit(request: Request) -> Response:
        try:
            offset, limit = int(request.query_params.get("offset", 0)), int(request.query_params.get("limit", 24))
        except ValueError:
            return error("offset and limit must be whole numbers", 400)
        refresh = request.query_params.get("refresh", "0") not in ("0", "", "false")
        return Json(session.audit_page(offset, min(max(limit, 1), 200), refresh))

    def thumb(request: Request) -> Response:
        try:
            path = session.thumbnail(request.path_params["row"])
        except UserError as err:
            return error(str(err), 404)
        if path is None:
            return error(f"the image of row {request.path_params['row']} cannot be read", 404)
        return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    routes = [Route("/", index), Route("/api/state", state), Route("/api/answer", answer, methods=["POST"]),
              Route("/api/skip", skip, methods=["POST"]), Route("/api/keep", keep, methods=["POST"]),
              Route("/api/undo", undo, methods=["POST"]),
              Route("/api/audit", audit), Route("/thumb/{row:int}", thumb),
              Mount("/static", StaticFiles(directory=STATIC), name="static")]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    return Starlette(routes=routes, middleware=middleware)
