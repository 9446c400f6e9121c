"""The images behind the pages: stored files (to logged-in users only) and a field's heat map."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from leukodx.web import heatmaps
from leukodx.web.api import CaseId
from leukodx.web.deps import Db, PageUser, session_principal
from leukodx.web.storage import MEDIA_TYPES

router = APIRouter()


@router.get("/cases/{case_id}/fields/{field_id}/heatmap")
async def field_heatmap(request: Request, case_id: CaseId, field_id: CaseId, who: PageUser):
    name = await heatmaps.field_heatmap(request.app.state.ctx, case_id, field_id)
    if name is None:
        return Response("This analyzer gives no heat map.", status_code=404, media_type="text/plain")
    return RedirectResponse(f"/files/{name}", status_code=303)


@router.get("/files/{name}")
def stored_file(request: Request, name: str, db: Db):
    who = session_principal(request, db)
    if who is None:
        return Response("Log in to see images.", status_code=401, media_type="text/plain")
    path = request.app.state.ctx.store.path(name)
    if path is None:
        return Response("No such file.", status_code=404, media_type="text/plain")
    return FileResponse(path, media_type=MEDIA_TYPES[name.rsplit(".", 1)[1]],
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
