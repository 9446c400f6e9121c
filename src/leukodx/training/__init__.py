"""One training engine for classification and segmentation (AMP, DDP, early stopping, resume, progress)."""
