"""The classes a leukocyte can be given in review, and the words shown for them.

The cell-level model suggests one of `AI_CELL_CLASSES`; a reviewer may give any of `CELL_CLASSES`, or exclude
the cell (`EXCLUDED`: it is then left out of the differential count). `BLAST` cells make the blast percentage::

    blast % = 100 * blasts / (cells counted in the differential)
"""

from __future__ import annotations

BLAST = "blast"
EXCLUDED = "excluded"
CELL_CLASSES = ("blast", "lymphocyte", "neutrophil", "monocyte", "eosinophil", "basophil", "smudge", "artefact")
# what the cell-level model can tell apart (it learnt from field labels: a benign field holds no blasts)
AI_CELL_CLASSES = ("blast", "lymphocyte")
CELL_CLASS_WORDS = {
    "blast": "Blast",
    "lymphocyte": "Lymphocyte / hematogone",
    "neutrophil": "Neutrophil",
    "monocyte": "Monocyte",
    "eosinophil": "Eosinophil",
    "basophil": "Basophil",
    "smudge": "Smudge cell",
    "artefact": "Artefact (not a leukocyte)",
    "excluded": "Excluded",
}
# not leukocytes to count: left out of the differential's total
NOT_COUNTED = ("artefact", "excluded")
