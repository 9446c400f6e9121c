"""leukodx: AI-assisted workbench for Acute Lymphoblastic Leukemia from blood smear images."""

__version__ = "0.1.0"
