"""leukodx: AI-assisted workbench for Acute Lymphoblastic Leukemia from blood smear images."""

__version__ = "0.1.0"

CLASSES = ("Benign", "Early", "Pre", "Pro")
"""The four classes of the Taleqani data set: hematogones (benign), early pre-B, pre-B and pro-B ALL."""

MALIGNANT_CLASSES = ("Early", "Pre", "Pro")
