"""Making a trained model ready for the clinic, and measuring it: ONNX export and its int8 check, calibration
(temperature, low-confidence threshold), the out-of-distribution and red-cell reference fits, and the speed bench.

These are training-time operations (they need `leukodx[train]`); the clinic runtime in `leukodx.inference` only
reads what they write into a model directory.
"""
