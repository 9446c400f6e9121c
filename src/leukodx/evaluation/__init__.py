"""Evaluation: metrics, `leukodx evaluate` and its report, lab shift, study tables (imported on use)."""
