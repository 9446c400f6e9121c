"""The clinicians' web application: `create_app(settings, analyzer=None)` (see leukodx.web.app)."""

from __future__ import annotations


def create_app(settings=None, analyzer=None):
    from leukodx.web.app import create_app as _create

    return _create(settings, analyzer)


__all__ = ["create_app"]
