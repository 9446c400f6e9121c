"""`python -m leukodx.web.migrations revision -m "what changes" [--autogenerate --db FILE_OR_URL]`: a new
revision file in versions/ (for developers; with --autogenerate, diffed against the database given, which
must be at the newest revision), or `heads`: the newest revision."""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m leukodx.web.migrations")
    sub = ap.add_subparsers(dest="cmd", required=True)
    rev = sub.add_parser("revision", help="write a new revision file")
    rev.add_argument("-m", "--message", required=True)
    rev.add_argument("--autogenerate", action="store_true")
    rev.add_argument("--db", help="database to compare with (for --autogenerate)")
    sub.add_parser("heads", help="print the newest revision")
    args = ap.parse_args()

    from alembic import command

    from leukodx.web.db import MIGRATIONS_DIR, _scripts, alembic_config, make_engine
    from leukodx.web.settings import database_url_for

    if args.cmd == "heads":
        print(_scripts().get_current_head())
        return
    head = _scripts().get_current_head()
    rev_id = f"{int(head) + 1:04d}" if head and head.isdigit() else None
    slug = "_".join(args.message.lower().split())[:40]
    if args.autogenerate:
        if not args.db:
            ap.error("--autogenerate needs --db")
        with make_engine(database_url_for(args.db)).connect() as conn:
            command.revision(alembic_config(conn), message=args.message, autogenerate=True, rev_id=rev_id)
            conn.commit()
    else:
        command.revision(alembic_config(), message=args.message, rev_id=rev_id)
    print(f"new revision {rev_id} ({slug}) in {MIGRATIONS_DIR / 'versions'}")


if __name__ == "__main__":
    main()
