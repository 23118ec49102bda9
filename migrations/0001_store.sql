-- Tessera's store on PostgreSQL: sealed bytes, ids, fingerprints and public
-- facts only, never a PAN and never an unwrapped key. Applied by
-- `tessera migrate` (or at start-up with `[store] migrate = true`), once, in
-- one transaction. Token ids and fingerprints are keyed hashes (32 bytes).

-- Records, tombstones, seal versions and audit events are append-only: the
-- service never updates or deletes them, and these triggers refuse it to
-- every role, the owner included (compaction is a separate, audited job).
CREATE FUNCTION tessera_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'tessera: % is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TABLE records (
    token_id bytea PRIMARY KEY CHECK (length(token_id) = 32),
    tenant   text  NOT NULL,
    -- The sealed record (SealedRecord::encode): sealed PAN and public facts.
    body     bytea NOT NULL
);
-- scan_tenant pages a tenant in token-id order.
CREATE UNIQUE INDEX records_by_tenant ON records (tenant, token_id);

CREATE TABLE tombstones (
    token_id bytea PRIMARY KEY REFERENCES records (token_id),
    body     bytea NOT NULL
);

-- The live-fingerprint index: the record a tenant's fingerprint points at.
-- It moves to a new record only once its holder is tombstoned, so it is an
-- index, updated in place, not a record.
CREATE TABLE fingerprints (
    tenant      text  NOT NULL,
    fingerprint bytea NOT NULL CHECK (length(fingerprint) = 32),
    token_id    bytea NOT NULL REFERENCES records (token_id),
    PRIMARY KEY (tenant, fingerprint)
);

-- Re-sealed PANs: version 1, 2, ... after the record's own (version 0).
CREATE TABLE sealed_versions (
    token_id   bytea   NOT NULL REFERENCES records (token_id),
    version    integer NOT NULL CHECK (version > 0),
    sealed_pan bytea   NOT NULL,
    PRIMARY KEY (token_id, version)
);

-- The audit log, one chained event per position from 0, and its signed head.
CREATE TABLE audit_events (
    seq  bigint PRIMARY KEY CHECK (seq >= 0),
    body bytea  NOT NULL
);

CREATE TABLE audit_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    body     bytea   NOT NULL
);

-- Wrapped keys change in place: a master-key rotation rewraps them and
-- crypto-shredding deletes them (PCI DSS 3.7.5). `store_key` is tenant,
-- purpose and version in an order-preserving encoding.
CREATE TABLE wrapped_keys (
    store_key bytea PRIMARY KEY,
    tenant    text  NOT NULL,
    body      bytea NOT NULL
);
CREATE INDEX wrapped_keys_by_tenant ON wrapped_keys (tenant, store_key);

-- Progress markers of background jobs, overwritten as they go.
CREATE TABLE checkpoints (
    name  text  PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TRIGGER records_append_only BEFORE UPDATE OR DELETE ON records
    FOR EACH ROW EXECUTE FUNCTION tessera_refuse_change();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_refuse_change();
CREATE TRIGGER tombstones_append_only BEFORE UPDATE OR DELETE ON tombstones
    FOR EACH ROW EXECUTE FUNCTION tessera_refuse_change();
CREATE TRIGGER tombstones_no_truncate BEFORE TRUNCATE ON tombstones
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_refuse_change();
CREATE TRIGGER sealed_versions_append_only BEFORE UPDATE OR DELETE ON sealed_versions
    FOR EACH ROW EXECUTE FUNCTION tessera_refuse_change();
CREATE TRIGGER sealed_versions_no_truncate BEFORE TRUNCATE ON sealed_versions
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_refuse_change();
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION tessera_refuse_change();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_refuse_change();
