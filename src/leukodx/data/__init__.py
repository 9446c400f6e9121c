"""Data: layouts, safe image reading, checks, splits, transforms, datasets, synthetic smears."""
