-- A leukodx database at schema version 1, made by leukodx before Alembic (commit 34927cc, src/leukodx/web/db.py
-- migrate()) with one user, case, field and two audit entries; for the upgrade test in tests/test_web_postgres.py.
BEGIN TRANSACTION;
CREATE TABLE api_tokens (
	id INTEGER NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	token_hash VARCHAR(64) NOT NULL, 
	prefix VARCHAR(16) NOT NULL, 
	role VARCHAR(20) NOT NULL, 
	created_at DATETIME NOT NULL, 
	created_by VARCHAR(100) NOT NULL, 
	last_used_at DATETIME, 
	revoked_at DATETIME, 
	PRIMARY KEY (id)
);
CREATE TABLE audit_log (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	actor VARCHAR(100) NOT NULL, 
	action VARCHAR(60) NOT NULL, 
	target VARCHAR(100) NOT NULL, 
	detail TEXT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "audit_log" VALUES(1,'2026-12-01 09:23:20.000000','cli','user.add','user:olduser','{"role": "admin"}');
INSERT INTO "audit_log" VALUES(2,'2026-12-01 09:23:20.000000','olduser','case.create','case:1','{}');
CREATE TABLE cases (
	id INTEGER NOT NULL, 
	reference VARCHAR(100) NOT NULL, 
	note TEXT NOT NULL, 
	created_by VARCHAR(100) NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	n_fields INTEGER NOT NULL, 
	ai_label VARCHAR(20), 
	ai_confidence FLOAT, 
	ai_malignant_probability FLOAT, 
	total_cell_count INTEGER NOT NULL, 
	flagged BOOLEAN NOT NULL, 
	summary JSON NOT NULL, 
	review_decision VARCHAR(20), 
	review_label VARCHAR(20), 
	review_note TEXT NOT NULL, 
	reviewed_by VARCHAR(100), 
	reviewed_at DATETIME, 
	PRIMARY KEY (id)
);
INSERT INTO "cases" VALUES(1,'OLD-1','made by leukodx before Alembic','olduser','2026-12-01 09:23:20.000000','2026-12-01 09:23:20.000000',0,NULL,NULL,NULL,0,0,'{}',NULL,NULL,'',NULL,NULL);
CREATE TABLE fields (
	id INTEGER NOT NULL, 
	case_id INTEGER NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	image_file VARCHAR(100) NOT NULL, 
	overlay_file VARCHAR(100), 
	heatmap_file VARCHAR(100), 
	display_name VARCHAR(200) NOT NULL, 
	width INTEGER NOT NULL, 
	height INTEGER NOT NULL, 
	uploaded_by VARCHAR(100) NOT NULL, 
	uploaded_at DATETIME NOT NULL, 
	label VARCHAR(20), 
	probabilities JSON NOT NULL, 
	confidence FLOAT NOT NULL, 
	malignant_probability FLOAT NOT NULL, 
	cell_count INTEGER NOT NULL, 
	flag VARCHAR(30) NOT NULL, 
	flag_reason TEXT NOT NULL, 
	size_note TEXT NOT NULL, 
	result JSON NOT NULL, 
	review_decision VARCHAR(20), 
	review_label VARCHAR(20), 
	review_note TEXT NOT NULL, 
	reviewed_by VARCHAR(100), 
	reviewed_at DATETIME, 
	PRIMARY KEY (id), 
	FOREIGN KEY(case_id) REFERENCES cases (id) ON DELETE CASCADE
);
INSERT INTO "fields" VALUES(1,1,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.jpg',NULL,NULL,'f.jpg',10,10,'olduser','2026-12-01 09:23:20.000000','Pre','{"Pre": 1.0}',1.0,1.0,1,'ok','','','{"label": "Pre"}',NULL,NULL,'',NULL,NULL);
CREATE TABLE login_sessions (
	id VARCHAR(64) NOT NULL, 
	user_id INTEGER NOT NULL, 
	csrf_token VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE TABLE schema_migrations (
	version INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	applied_at DATETIME NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO "schema_migrations" VALUES(1,'initial schema','2026-12-01 09:23:20.000000');
CREATE TABLE users (
	id INTEGER NOT NULL, 
	username VARCHAR(64) NOT NULL, 
	password_hash VARCHAR(300) NOT NULL, 
	role VARCHAR(20) NOT NULL, 
	active BOOLEAN NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "users" VALUES(1,'olduser','scrypt$16384$8$1$tFOdvOQphi_Un_mfy9ngjA==$Qz4Ngsgmx31IY5m1iHTIT7zoy45eV4Ag0JnQbHbW0Uk=','admin',1,'2026-12-01 09:23:20.000000');
CREATE UNIQUE INDEX ix_users_username ON users (username);
CREATE INDEX ix_api_tokens_name ON api_tokens (name);
CREATE UNIQUE INDEX ix_api_tokens_token_hash ON api_tokens (token_hash);
CREATE INDEX ix_cases_flagged ON cases (flagged);
CREATE INDEX ix_cases_review_decision ON cases (review_decision);
CREATE INDEX ix_cases_reference ON cases (reference);
CREATE INDEX ix_audit_log_at ON audit_log (at);
CREATE INDEX ix_audit_log_action ON audit_log (action);
CREATE INDEX ix_login_sessions_user_id ON login_sessions (user_id);
CREATE INDEX ix_fields_case_id ON fields (case_id);
CREATE INDEX ix_fields_sha256 ON fields (sha256);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
COMMIT;
