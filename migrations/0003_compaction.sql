-- Compaction (src/store/compact.rs): the one way rows leave the record
-- tables. The service role has no DELETE; it calls two SECURITY DEFINER
-- functions that remove only what qualifies, inside the write pipeline's
-- commit (so each removal lands with the audit event that names it).

-- When the database stored each tombstone and seal version, by its own
-- clock (the statement's, not the transaction's start): a removal needs
-- the row to be older than the owner's minimum grace, whatever its bytes
-- say (a stolen service credential could write a tombstone dated 1970,
-- but not one the database stored a week ago). Rows written before this
-- migration count from now. With `track_commit_timestamp = on` the
-- functions also require the row's commit to be that old, which closes the
-- window of a transaction held open after the insert.
ALTER TABLE tombstones ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE sealed_versions ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();

CREATE FUNCTION tessera_stamp_row() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.recorded_at := pg_catalog.clock_timestamp();
    RETURN NEW;
END
$$;

CREATE TRIGGER tombstones_recorded_at BEFORE INSERT ON tombstones
    FOR EACH ROW EXECUTE FUNCTION tessera_stamp_row();
CREATE TRIGGER sealed_versions_recorded_at BEFORE INSERT ON sealed_versions
    FOR EACH ROW EXECUTE FUNCTION tessera_stamp_row();

-- Ids of purged records: a token id is never issued twice, so a token a
-- merchant still holds never comes to stand for another card.
CREATE TABLE purged_tokens (
    token_id  bytea       PRIMARY KEY CHECK (length(token_id) = 32),
    purged_at timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER purged_tokens_append_only BEFORE UPDATE OR DELETE ON purged_tokens
    FOR EACH ROW EXECUTE FUNCTION tessera_refuse_change();
CREATE TRIGGER purged_tokens_no_truncate BEFORE TRUNCATE ON purged_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_refuse_change();

-- The database itself refuses a record under a purged id, whoever inserts
-- it (a replica of an older build, a stolen credential). Tessera checks
-- first, so its own writers see a refusal per call, not a failed batch.
-- The function runs as the inserting role, so its search path is fixed and
-- the table named with its schema: a temporary table called
-- `purged_tokens` must not stand in for the real one.
DO $migration$
BEGIN
    EXECUTE format($fn$
        CREATE FUNCTION tessera_refuse_purged_id() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, %1$I, pg_temp AS $body$
        BEGIN
            IF EXISTS (SELECT 1 FROM inserted i
                       JOIN %1$I.purged_tokens p ON p.token_id = i.token_id) THEN
                RAISE EXCEPTION 'tessera: token id was purged and stays reserved'
                    USING ERRCODE = 'unique_violation';
            END IF;
            RETURN NULL;
        END
        $body$
    $fn$, current_schema());
END
$migration$;

-- Once per statement, over all its rows: a batch of 1,000 records is one
-- join, not 1,000 calls.
CREATE TRIGGER records_not_purged AFTER INSERT ON records
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION tessera_refuse_purged_id();

-- A purge deletes records by id; each deleted record's foreign-key check
-- looks its id up in the fingerprint index, which needs an index of its own.
CREATE INDEX fingerprints_by_token ON fingerprints (token_id);

-- The owner's floor under every removal: a row younger than this (by the
-- database's clock) is never removed, whatever the service asks.
-- Change it as the owner: UPDATE compaction_policy SET min_grace = '7 days'.
CREATE TABLE compaction_policy (
    only_row  boolean  PRIMARY KEY DEFAULT true CHECK (only_row),
    min_grace interval NOT NULL CHECK (min_grace >= interval '0')
);

INSERT INTO compaction_policy (only_row, min_grace) VALUES (true, interval '1 day');

-- The append-only triggers let one thing through: deletes from the three
-- record tables made by the compaction functions below, which set
-- `tessera.compacting` for their own statements. The service role holds
-- no DELETE, so the setting opens nothing to it; the audit log and the
-- purged ids stay closed to every role.
CREATE OR REPLACE FUNCTION tessera_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE'
       AND TG_TABLE_NAME IN ('records', 'tombstones', 'sealed_versions')
       AND current_setting('tessera.compacting', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'tessera: % is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- Nobody but the owner creates objects in the schema: a function created
-- beside the tables (say `unnest(bytea[])`) could otherwise be picked by
-- the owner's functions below (CVE-2018-1058).
DO $migration$
BEGIN
    EXECUTE format('REVOKE CREATE ON SCHEMA %I FROM PUBLIC', current_schema());
END
$migration$;

-- The functions run as the owner, so their search path is fixed (pg_catalog
-- first, then the schema they were made in, then pg_temp last: a caller's
-- temporary table named `tombstones` must not stand in for the real one),
-- every table is named with its schema, and polymorphic built-ins with
-- pg_catalog.
DO $migration$
BEGIN
    EXECUTE format($fn$
        -- Whether a row stored at `recorded_at` by transaction `xmin` is
        -- older than the owner's floor.
        CREATE FUNCTION tessera_graced(recorded_at timestamptz, xmin xid)
        RETURNS boolean
        LANGUAGE plpgsql STABLE
        SET search_path = pg_catalog, %1$I, pg_temp AS $body$
        DECLARE
            cutoff timestamptz := pg_catalog.now()
                - (SELECT p.min_grace FROM %1$I.compaction_policy p);
        BEGIN
            -- No policy row: no floor known, so nothing is old enough.
            IF cutoff IS NULL OR recorded_at > cutoff THEN
                RETURN false;
            END IF;
            IF pg_catalog.current_setting('track_commit_timestamp')::boolean THEN
                RETURN coalesce(pg_catalog.pg_xact_commit_timestamp(xmin) <= cutoff, true);
            END IF;
            RETURN true;
        END
        $body$
    $fn$, current_schema());

    EXECUTE format($fn$
        -- Purges the records of `ids` whose tombstone is at or before
        -- `dead_by_ms` by its own time and older than the floor by the
        -- database's; returns the ids purged.
        CREATE FUNCTION tessera_purge(ids bytea[], dead_by_ms bigint)
        RETURNS SETOF bytea
        LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, %1$I, pg_temp AS $body$
        DECLARE
            eligible bytea[];
        BEGIN
            SELECT coalesce(pg_catalog.array_agg(t.token_id), '{}') INTO eligible
            FROM %1$I.tombstones t
            WHERE t.token_id = ANY(ids)
              AND %1$I.tessera_graced(t.recorded_at, t.xmin)
              -- Tombstone layout 1: version, reason (1-3), time (u64, BE).
              AND pg_catalog.length(t.body) = 10
              AND pg_catalog.get_byte(t.body, 0) = 1
              AND pg_catalog.get_byte(t.body, 1) BETWEEN 1 AND 3
              AND ('x' || pg_catalog.encode(pg_catalog.substring(t.body, 3, 8), 'hex'))
                  ::bit(64)::bigint BETWEEN 0 AND dead_by_ms;
            PERFORM pg_catalog.set_config('tessera.compacting', 'on', true);
            DELETE FROM %1$I.fingerprints WHERE token_id = ANY(eligible);
            DELETE FROM %1$I.sealed_versions WHERE token_id = ANY(eligible);
            DELETE FROM %1$I.tombstones WHERE token_id = ANY(eligible);
            DELETE FROM %1$I.records WHERE token_id = ANY(eligible);
            INSERT INTO %1$I.purged_tokens (token_id) SELECT pg_catalog.unnest(eligible);
            PERFORM pg_catalog.set_config('tessera.compacting', 'off', true);
            RETURN QUERY SELECT pg_catalog.unnest(eligible);
        END
        $body$
    $fn$, current_schema());

    EXECUTE format($fn$
        -- Drops the seal versions (ids[i], versions[i]) that are older than
        -- their record's newest, when that newest is older than the floor
        -- (a version inserted a moment ago, say a forged one numbered
        -- 2147483647, cannot make the real ones go); returns how many it
        -- dropped.
        CREATE FUNCTION tessera_drop_seal_versions(ids bytea[], versions integer[])
        RETURNS bigint
        LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, %1$I, pg_temp AS $body$
        DECLARE
            dropped bigint;
        BEGIN
            PERFORM pg_catalog.set_config('tessera.compacting', 'on', true);
            DELETE FROM %1$I.sealed_versions s
            USING ROWS FROM (pg_catalog.unnest(ids), pg_catalog.unnest(versions)) AS d(token_id, version),
                  LATERAL (SELECT n.version, n.recorded_at, n.xmin
                           FROM %1$I.sealed_versions n
                           WHERE n.token_id = d.token_id
                           ORDER BY n.version DESC LIMIT 1) newest
            WHERE s.token_id = d.token_id
              AND s.version = d.version
              AND s.version < newest.version
              AND %1$I.tessera_graced(newest.recorded_at, newest.xmin);
            GET DIAGNOSTICS dropped = ROW_COUNT;
            PERFORM pg_catalog.set_config('tessera.compacting', 'off', true);
            RETURN dropped;
        END
        $body$
    $fn$, current_schema());
END
$migration$;

REVOKE ALL ON FUNCTION tessera_graced(timestamptz, xid) FROM PUBLIC;
REVOKE ALL ON FUNCTION tessera_purge(bytea[], bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION tessera_drop_seal_versions(bytea[], integer[]) FROM PUBLIC;
