"""The classes a leukocyte can be given in review, the classes known by name, and the words shown.

The cell-level model (leukodx.inference.cell_classifier) answers one of its config's `classes`, or
`UNIDENTIFIED` below the confidence threshold chosen on validation cells (as commercial analysers do: the
reviewer classifies it). A reviewer may give any of `CELL_CLASSES`, or exclude the cell (`EXCLUDED`: left out
of the differential). A class outside `KNOWN_CLASSES` has no words here; the web app then keeps no suggestion.
`BLAST` cells make the blast percentage (docs/review.md). "smudge" is in the reviewers' vocabulary, but no
training source has smudge cells: the model never suggests it (its model card says so).
"""

from __future__ import annotations

BLAST = "blast"
EXCLUDED = "excluded"
UNIDENTIFIED = "unidentified"
NOT_LEUKOCYTE = "not_leukocyte"
# what a reviewer may give a cell (the web API's CellLabel lists the same)
CELL_CLASSES = ("blast", "lymphocyte", "neutrophil", "monocyte", "eosinophil", "basophil", "ig", "erythroblast",
                "smudge", "artefact")
# what a cell may carry: a reviewer's class, or a cell-level model's suggestion (the bundled model's classes, or
# "unidentified" below its confidence threshold)
KNOWN_CLASSES = (*CELL_CLASSES, NOT_LEUKOCYTE, UNIDENTIFIED)
CELL_CLASS_WORDS = {
    "blast": "Blast",
    "lymphocyte": "Lymphocyte / hematogone",
    "neutrophil": "Neutrophil",
    "monocyte": "Monocyte",
    "eosinophil": "Eosinophil",
    "basophil": "Basophil",
    "ig": "Immature granulocyte",
    "erythroblast": "Erythroblast (nucleated red cell)",
    "smudge": "Smudge cell",
    NOT_LEUKOCYTE: "Not a leukocyte",
    "artefact": "Artefact (not a leukocyte)",
    UNIDENTIFIED: "Unidentified — verify",
    "excluded": "Excluded",
}
# not leukocytes to count, or not yet known: left out of the differential's total
NOT_COUNTED = ("artefact", NOT_LEUKOCYTE, "erythroblast", UNIDENTIFIED, EXCLUDED)
