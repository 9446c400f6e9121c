"""Cases by job: `rules` (locks, amendments, input cleaning, the case rule, sign-off warnings), `store`
(create, read, review, delete: one transaction each) and `serialise` (the API's answers, the CSV exports)."""
