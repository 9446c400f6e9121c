"""The clinicians' pages (server-rendered, Jinja2), a module per idea. Forms carry a CSRF token; uploads go
through the API."""

from __future__ import annotations

from fastapi import APIRouter

from leukodx.web.pages import account, adapt, admin, apidocs, cases, files, login
from leukodx.web.pages.base import render

router = APIRouter(include_in_schema=False)
for _module in (login, cases, files, account, admin, adapt, apidocs):
    router.include_router(_module.router)

__all__ = ["render", "router"]
