-- A leukodx database at schema version 1, made by leukodx before Alembic (commit 34927cc, src/leukodx/web/db.py
-- migrate()) with one user, case, field and two audit entries; for the upgrade test in tests/test_web_postgres.py.

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

CREATE FUNCTION public.audit_log_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END; $$;

SET default_tablespace = '';

SET default_table_access_method = heap;

CREATE TABLE public.api_tokens (
    id integer NOT NULL,
    name character varying(100) NOT NULL,
    token_hash character varying(64) NOT NULL,
    prefix character varying(16) NOT NULL,
    role character varying(20) NOT NULL,
    created_at timestamp with time zone NOT NULL,
    created_by character varying(100) NOT NULL,
    last_used_at timestamp with time zone,
    revoked_at timestamp with time zone
);

CREATE SEQUENCE public.api_tokens_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.api_tokens_id_seq OWNED BY public.api_tokens.id;

CREATE TABLE public.audit_log (
    id integer NOT NULL,
    at timestamp with time zone NOT NULL,
    actor character varying(100) NOT NULL,
    action character varying(60) NOT NULL,
    target character varying(100) NOT NULL,
    detail text NOT NULL
);

CREATE SEQUENCE public.audit_log_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.audit_log_id_seq OWNED BY public.audit_log.id;

CREATE TABLE public.cases (
    id integer NOT NULL,
    reference character varying(100) NOT NULL,
    note text NOT NULL,
    created_by character varying(100) NOT NULL,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    n_fields integer NOT NULL,
    ai_label character varying(20),
    ai_confidence double precision,
    ai_malignant_probability double precision,
    total_cell_count integer NOT NULL,
    flagged boolean NOT NULL,
    summary json NOT NULL,
    review_decision character varying(20),
    review_label character varying(20),
    review_note text NOT NULL,
    reviewed_by character varying(100),
    reviewed_at timestamp with time zone
);

CREATE SEQUENCE public.cases_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.cases_id_seq OWNED BY public.cases.id;

CREATE TABLE public.fields (
    id integer NOT NULL,
    case_id integer NOT NULL,
    sha256 character varying(64) NOT NULL,
    image_file character varying(100) NOT NULL,
    overlay_file character varying(100),
    heatmap_file character varying(100),
    display_name character varying(200) NOT NULL,
    width integer NOT NULL,
    height integer NOT NULL,
    uploaded_by character varying(100) NOT NULL,
    uploaded_at timestamp with time zone NOT NULL,
    label character varying(20),
    probabilities json NOT NULL,
    confidence double precision NOT NULL,
    malignant_probability double precision NOT NULL,
    cell_count integer NOT NULL,
    flag character varying(30) NOT NULL,
    flag_reason text NOT NULL,
    size_note text NOT NULL,
    result json NOT NULL,
    review_decision character varying(20),
    review_label character varying(20),
    review_note text NOT NULL,
    reviewed_by character varying(100),
    reviewed_at timestamp with time zone
);

CREATE SEQUENCE public.fields_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.fields_id_seq OWNED BY public.fields.id;

CREATE TABLE public.login_sessions (
    id character varying(64) NOT NULL,
    user_id integer NOT NULL,
    csrf_token character varying(64) NOT NULL,
    created_at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone NOT NULL
);

CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name character varying(200) NOT NULL,
    applied_at timestamp with time zone NOT NULL
);

CREATE SEQUENCE public.schema_migrations_version_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.schema_migrations_version_seq OWNED BY public.schema_migrations.version;

CREATE TABLE public.users (
    id integer NOT NULL,
    username character varying(64) NOT NULL,
    password_hash character varying(300) NOT NULL,
    role character varying(20) NOT NULL,
    active boolean NOT NULL,
    created_at timestamp with time zone NOT NULL
);

CREATE SEQUENCE public.users_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.users_id_seq OWNED BY public.users.id;

ALTER TABLE ONLY public.api_tokens ALTER COLUMN id SET DEFAULT nextval('public.api_tokens_id_seq'::regclass);

ALTER TABLE ONLY public.audit_log ALTER COLUMN id SET DEFAULT nextval('public.audit_log_id_seq'::regclass);

ALTER TABLE ONLY public.cases ALTER COLUMN id SET DEFAULT nextval('public.cases_id_seq'::regclass);

ALTER TABLE ONLY public.fields ALTER COLUMN id SET DEFAULT nextval('public.fields_id_seq'::regclass);

ALTER TABLE ONLY public.schema_migrations ALTER COLUMN version SET DEFAULT nextval('public.schema_migrations_version_seq'::regclass);

ALTER TABLE ONLY public.users ALTER COLUMN id SET DEFAULT nextval('public.users_id_seq'::regclass);

INSERT INTO public.audit_log VALUES (1, '2026-12-01 09:23:24+00', 'cli', 'user.add', 'user:olduser', '{"role": "admin"}');
INSERT INTO public.audit_log VALUES (2, '2026-12-01 09:23:24+00', 'olduser', 'case.create', 'case:1', '{}');

INSERT INTO public.cases VALUES (1, 'OLD-1', 'made by leukodx before Alembic', 'olduser', '2026-12-01 09:23:24+00', '2026-12-01 09:23:24+00', 0, NULL, NULL, NULL, 0, false, '{}', NULL, NULL, '', NULL, NULL);

INSERT INTO public.fields VALUES (1, 1, 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.jpg', NULL, NULL, 'f.jpg', 10, 10, 'olduser', '2026-12-01 09:23:24+00', 'Pre', '{"Pre": 1.0}', 1, 1, 1, 'ok', '', '', '{"label": "Pre"}', NULL, NULL, '', NULL, NULL);

INSERT INTO public.schema_migrations VALUES (1, 'initial schema', '2026-12-01 09:23:24+00');

INSERT INTO public.users VALUES (1, 'olduser', 'scrypt$16384$8$1$9V13UWm0BdIdwvkbPWDLvw==$zVQ0JPQcgM2SVafpm6T5kklqaDur-jpi6Gr8t2ipv3Q=', 'admin', true, '2026-12-01 09:23:24+00');

SELECT pg_catalog.setval('public.api_tokens_id_seq', 1, false);

SELECT pg_catalog.setval('public.audit_log_id_seq', 2, true);

SELECT pg_catalog.setval('public.cases_id_seq', 1, true);

SELECT pg_catalog.setval('public.fields_id_seq', 1, true);

SELECT pg_catalog.setval('public.schema_migrations_version_seq', 1, false);

SELECT pg_catalog.setval('public.users_id_seq', 1, true);

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.cases
    ADD CONSTRAINT cases_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.fields
    ADD CONSTRAINT fields_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.login_sessions
    ADD CONSTRAINT login_sessions_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);

CREATE INDEX ix_api_tokens_name ON public.api_tokens USING btree (name);

CREATE UNIQUE INDEX ix_api_tokens_token_hash ON public.api_tokens USING btree (token_hash);

CREATE INDEX ix_audit_log_action ON public.audit_log USING btree (action);

CREATE INDEX ix_audit_log_at ON public.audit_log USING btree (at);

CREATE INDEX ix_cases_flagged ON public.cases USING btree (flagged);

CREATE INDEX ix_cases_reference ON public.cases USING btree (reference);

CREATE INDEX ix_cases_review_decision ON public.cases USING btree (review_decision);

CREATE INDEX ix_fields_case_id ON public.fields USING btree (case_id);

CREATE INDEX ix_fields_sha256 ON public.fields USING btree (sha256);

CREATE INDEX ix_login_sessions_user_id ON public.login_sessions USING btree (user_id);

CREATE UNIQUE INDEX ix_users_username ON public.users USING btree (username);

CREATE TRIGGER audit_log_append_only BEFORE DELETE OR UPDATE ON public.audit_log FOR EACH ROW EXECUTE FUNCTION public.audit_log_append_only();

ALTER TABLE ONLY public.fields
    ADD CONSTRAINT fields_case_id_fkey FOREIGN KEY (case_id) REFERENCES public.cases(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.login_sessions
    ADD CONSTRAINT login_sessions_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;

