"""A field's heat map: drawn the first time it is asked for, then kept in the file store (content-hash name)."""

from __future__ import annotations

from fastapi.concurrency import run_in_threadpool
from sqlalchemy import update

from leukodx.web.cases.rules import NotFound
from leukodx.web.db import Field
from leukodx.web.uploads import GoodImage


async def field_heatmap(ctx, case_id: int, field_id: int) -> str | None:
    """The stored name of the field's heat-map PNG, analysed, drawn and stored first when there is none yet.
    None when the analyzer gives no heat map; NotFound when the case has no such field or its image is gone."""

    def lookup():
        with ctx.sessions() as db:
            f = db.get(Field, field_id)
            if f is None or f.case_id != case_id:
                raise NotFound(f"Case {case_id} has no field {field_id}.", "Reload the case page.")
            given = (f.result or {}).get("scale_source") == "given by the lab"  # the scale the upload gave
            return f.heatmap_file, f.image_file, f.display_name, (f.result or {}).get("um_per_px") if given else None

    heat, image_file, name, um_per_px = await run_in_threadpool(lookup)
    if heat is not None:
        return heat
    path = ctx.store.path(image_file)
    if path is None:
        raise NotFound("The field's image file is missing.", "Upload the field again.")
    image = GoodImage(name, await run_in_threadpool(path.read_bytes), None, "", 0, 0)  # decoded when analysed
    [(_, _, _, png)] = await ctx.service.analyse([image], heatmap=True, render=True, um_per_px=um_per_px)
    if png is None:
        return None

    def keep():
        stored = ctx.store.put(png, "png")
        with ctx.sessions() as db:
            db.execute(update(Field).where(Field.id == field_id).values(heatmap_file=stored))
            db.commit()
        return stored

    return await run_in_threadpool(keep)
