"""The images behind the pages and the API's links: stored files and a field's heat map, to a logged-in user
(login session) or an API client (`Authorization: Bearer <token>`, the token that fetched the case)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from leukodx.web import heatmaps
from leukodx.web.deps import Db, LoginRequired, Principal, session_principal, token_principal
from leukodx.web.schemas import CaseId
from leukodx.web.storage import MEDIA_TYPES

router = APIRouter()


def _unauthorized(message: str) -> Response:
    return Response(message, status_code=401, media_type="text/plain",
                    headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"})


def file_principal(request: Request, db) -> Principal | Response:
    """Who asks for a file: a bearer token when the request carries an Authorization header (a wrong one is 401,
    never a fall-back to the session), else the login session; a 401 Response when neither."""
    header = request.headers.get("authorization")
    if header:
        try:
            return token_principal(db, header)
        except HTTPException as exc:  # the API's words, as plain text (an <img> shows no JSON)
            return _unauthorized(str(exc.detail))
    who = session_principal(request, db)
    if who is None:
        return _unauthorized("Log in to see images, or send 'Authorization: Bearer <token>'.")
    return who


@router.get("/cases/{case_id}/fields/{field_id}/heatmap")
async def field_heatmap(request: Request, case_id: CaseId, field_id: CaseId, db: Db):
    who = file_principal(request, db)
    if isinstance(who, Response):
        if not request.headers.get("authorization"):
            raise LoginRequired()  # no session and no token: to the login page, as before
        return who
    db.close()  # the heat map may take a while: no connection held meanwhile
    name = await heatmaps.field_heatmap(request.app.state.ctx, case_id, field_id)
    if name is None:
        return Response("This analyzer gives no heat map.", status_code=404, media_type="text/plain")
    return RedirectResponse(f"/files/{name}", status_code=303)


@router.get("/files/{name}")
def stored_file(request: Request, name: str, db: Db):
    who = file_principal(request, db)
    if isinstance(who, Response):
        return who
    path = request.app.state.ctx.store.path(name)
    if path is None:
        return Response("No such file.", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type=MEDIA_TYPES[name.rsplit(".", 1)[1]],
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
