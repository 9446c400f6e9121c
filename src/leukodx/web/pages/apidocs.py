"""The HTTP API's documentation page, drawn from the app's own OpenAPI spec (offline: no Swagger from a CDN)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from leukodx.web.deps import PageUser
from leukodx.web.pages.base import render

router = APIRouter()


@router.get("/api")
def api_docs(request: Request, who: PageUser):
    return render(request, "api.html", who=who, spec=request.app.openapi())
