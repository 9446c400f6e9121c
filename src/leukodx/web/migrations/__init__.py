"""Alembic migrations of the case store (run by `leukodx.web.db.migrate`, at every start of leukodx).

Add a revision (from the repository root, with the venv active):

    python -m leukodx.web.migrations revision -m "what changes"   [--autogenerate --db FILE]

Each revision file in versions/ is named NNNN_what.py with revision "NNNN" and revises the previous one.
A revision that changes the schema must also insert its number into the legacy table `schema_migrations`
(see 0001), so that a leukodx from before Alembic refuses the database instead of misreading it.
Never edit a revision that was released.
"""
