"""The clinic runtime: the analysis pipeline shared by `predict`, `evaluate` and the web app, on numpy and ONNX
Runtime alone (no torch): reading, scale, tiling, engines, cell instances and calls, flags, heat maps, the case rule."""
