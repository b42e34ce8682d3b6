-- Safe rollouts (bunting-rollouts), their history and scheduled changes.
--
-- A rollout's definition is kept as the JSON of bunting_rollouts::RolloutInput and checked again
-- on every read; its state as the JSON of RolloutState, with the state's name in its own column
-- for the index below. No foreign key to flag_sets: the rollout names a flag the service checked
-- when it was created, and the memory store (which knows no sets) keeps the same contract.

CREATE TABLE rollouts (
    id          text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,56}$'),
    flag_set_id text        NOT NULL,
    flag_key    text        NOT NULL CHECK (flag_key <> ''),
    spec        jsonb       NOT NULL CHECK (jsonb_typeof(spec) = 'object'),
    -- The flag's definition before the rollout's first write: what a rollback or an abort restores.
    pre_rollout jsonb       NOT NULL,
    state       text        NOT NULL
                CHECK (state IN ('running', 'paused', 'completed', 'rolled_back', 'aborted')),
    state_value jsonb       NOT NULL CHECK (state_value ->> 'state' = state),
    -- 1 at creation, bumped by every transition (the controller's optimistic concurrency).
    version     bigint      NOT NULL CHECK (version > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One active rollout per flag. The store's insert relies on it: a second one is refused by it.
CREATE UNIQUE INDEX rollouts_one_active_per_flag
    ON rollouts (flag_set_id, flag_key) WHERE state IN ('running', 'paused');

-- Every transition: who (a person's principal, or rollout:<id> for the controller) and why.
CREATE TABLE rollout_history (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rollout_id  text        NOT NULL REFERENCES rollouts (id),
    from_state  text,
    to_state    text        NOT NULL,
    state_value jsonb       NOT NULL,
    principal   text        NOT NULL,
    reason      text        NOT NULL,
    version     bigint      NOT NULL,
    occurred_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX rollout_history_by_rollout ON rollout_history (rollout_id, id);

-- A flag change or a rollout start at a time. Fires once: pending -> fired is one conditional
-- UPDATE, so of two controllers (a lost lease's and its successor's) only one claims it.
CREATE TABLE scheduled_changes (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    due_at      timestamptz NOT NULL,
    action      jsonb       NOT NULL CHECK (jsonb_typeof(action) = 'object'),
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    state       text        NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'fired', 'cancelled')),
    settled_at  timestamptz,
    settled_by  text,
    CHECK ((state = 'pending') = (settled_at IS NULL))
);

CREATE INDEX scheduled_changes_pending ON scheduled_changes (due_at) WHERE state = 'pending';
