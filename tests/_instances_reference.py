"""The cell splitting as it was before it was batched (issue 23): one `split_instances` call per connected
component. tests/test_instances_batched.py checks that the batched version gives the same labels, bit for bit."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from leukodx.inference.instances import _EIGHT, DEFAULT_PARAMS, close_gaps, scaled_params, split_instances


def split_per_component_reference(mask: np.ndarray, base: dict | None, at_reference: bool = False) -> np.ndarray:
    b = {**DEFAULT_PARAMS, **(base or {})}
    params = scaled_params((b["reference_side"],) * 2, base=base) if at_reference else scaled_params(mask.shape,
                                                                                                       base=base)
    mask = close_gaps(mask, params.pop("close_radius", 0.0))
    comp, n = ndi.label(mask, structure=_EIGHT)
    out = np.zeros(mask.shape, np.int32)
    h, w = mask.shape
    pad, next_id = 2, 0
    for k, sl in enumerate(ndi.find_objects(comp), start=1):
        if sl is None or (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start) < params["min_area"]:
            continue
        y0, y1 = max(sl[0].start - pad, 0), min(sl[0].stop + pad, h)
        x0, x1 = max(sl[1].start - pad, 0), min(sl[1].stop + pad, w)
        lab, _ = split_instances(comp[y0:y1, x0:x1] == k, **params)
        if lab.max() == 0:
            continue
        view = out[y0:y1, x0:x1]
        fg = lab > 0
        view[fg] = lab[fg] + next_id
        next_id += int(lab.max())
    return out
