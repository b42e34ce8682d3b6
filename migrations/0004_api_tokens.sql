-- API tokens (src/auth/): who may call which gRPC methods on which flag sets.
--
-- Only a hash of each token's secret is kept: SHA-256 over the id and the 256-bit secret
-- (src/auth/token.rs). The id is public and is how a node finds the record without a scan.
-- Revoked tokens stay (revoked_at set) so listings show them and a restart's bootstrap, which
-- inserts only into an empty table, never brings a revoked bootstrap token back.

CREATE TABLE api_tokens (
    id          text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    name        text        NOT NULL CHECK (name <> '' AND length(name) <= 128),
    hash        bytea       NOT NULL CHECK (length(hash) = 32),
    -- Scope names (src/auth/scope.rs); a node refuses a token holding one it does not know.
    scopes      text[]      NOT NULL,
    -- The flag sets the token may touch; NULL: every set.
    flag_sets   text[],
    expires_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- The name of the token that created this one ('bootstrap' for the first).
    created_by  text        NOT NULL,
    revoked_at  timestamptz
);
