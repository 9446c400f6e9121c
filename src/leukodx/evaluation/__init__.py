"""Evaluation: metrics (metrics.py), synthetic lab-to-lab variation (shift.py), the HTML report (report.py) and
`leukodx evaluate` (evaluate.py). Submodules are imported on use, so importing this package stays cheap."""
