-- Bunting's flag store: flag sets, their flags, and the audit log of every write.
--
-- Deleting a set or a flag leaves a tombstone (deleted_at) instead of removing the row, so its
-- version keeps counting if it is re-created: a version is never reused, and a node that saw the
-- deletion can tell a re-created set from a stale echo of the old one.

CREATE TABLE flag_sets (
    id          text        PRIMARY KEY CHECK (id <> '' AND length(id) <= 256),
    -- The snapshot version: bumped by every change to the set or any of its flags.
    version     bigint      NOT NULL CHECK (version > 0),
    metadata    jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    -- flagd's "$evaluators": shared rules that flags reach with "$ref".
    evaluators  jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(evaluators) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

CREATE TABLE flags (
    flag_set_id text        NOT NULL REFERENCES flag_sets (id),
    key         text        NOT NULL CHECK (key <> '' AND length(key) <= 256),
    -- The flag as flagd defines it; the last one written is kept on a tombstone.
    definition  jsonb       NOT NULL,
    -- Bumped by every write to this flag; what a writer's expected version is checked against.
    version     bigint      NOT NULL CHECK (version > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    PRIMARY KEY (flag_set_id, key)
);

CREATE TABLE audit_log (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flag_set_id      text        NOT NULL REFERENCES flag_sets (id),
    -- NULL for a write to the set itself (its metadata or $evaluators, or the whole set).
    flag_key         text,
    action           text        NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    actor            text        NOT NULL,
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    before_value     jsonb,
    after_value      jsonb,
    -- The set version this write produced.
    flag_set_version bigint      NOT NULL
);

-- The admin API pages one set's history newest first.
CREATE INDEX audit_log_by_flag_set ON audit_log (flag_set_id, id DESC);
