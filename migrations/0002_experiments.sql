-- Experiments on flags (bunting.v1.Experiments) and the audit log of every change to them.
--
-- An experiment's definition (flag, arms, control, metrics) is written once at creation and never
-- changed; only its state moves, draft -> running -> stopped, each step bumping its version.
--
-- Its audit rows get a table of their own rather than going into audit_log: audit_log's rows are
-- flag-set writes (flag_set_version NOT NULL is "the set version this write produced", and an
-- experiment write produces none), its action is limited to create/update/delete (an experiment
-- starts and stops), and the Admin API's ListAudit would show experiment writes as flag changes.

CREATE TABLE experiments (
    id          text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,64}$'),
    -- Flag sets are never removed (deletes leave tombstones), so this reference always holds.
    flag_set_id text        NOT NULL REFERENCES flag_sets (id),
    flag_key    text        NOT NULL CHECK (flag_key <> ''),
    -- The flag's variant names when the experiment was created: sorted, unique, two or more.
    arms        text[]      NOT NULL CHECK (cardinality(arms) >= 2),
    control     text        NOT NULL CHECK (control = ANY (arms)),
    -- [{"name", "event", "kind": "conversion" | "mean"}, ...], as bunting-experiments' Metric.
    metrics     jsonb       NOT NULL CHECK (jsonb_typeof(metrics) = 'array'),
    state       text        NOT NULL CHECK (state IN ('draft', 'running', 'stopped')),
    started_at  timestamptz,
    stopped_at  timestamptz,
    -- 1 at creation, bumped by each start and stop.
    version     bigint      NOT NULL CHECK (version > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'draft') = (started_at IS NULL)),
    CHECK ((state = 'stopped') = (stopped_at IS NOT NULL))
);

-- One running experiment per flag: an evaluation exposes the user to at most one experiment. The
-- store checks this under a lock first; the index is the backstop.
CREATE UNIQUE INDEX experiments_one_running_per_flag
    ON experiments (flag_set_id, flag_key) WHERE state = 'running';

CREATE INDEX experiments_by_flag_set ON experiments (flag_set_id, id);

CREATE TABLE experiment_audit_log (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    experiment_id text        NOT NULL REFERENCES experiments (id),
    action        text        NOT NULL CHECK (action IN ('create', 'start', 'stop')),
    actor         text        NOT NULL,
    occurred_at   timestamptz NOT NULL DEFAULT now(),
    -- The experiment as JSON before and after the write (before is NULL for a create).
    before_value  jsonb,
    after_value   jsonb       NOT NULL,
    -- The experiment's version this write produced.
    version       bigint      NOT NULL
);

CREATE INDEX experiment_audit_log_by_experiment ON experiment_audit_log (experiment_id, id DESC);
