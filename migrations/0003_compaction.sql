-- Compaction (src/store/compact.rs): the one way rows leave the record
-- tables. The service role has no DELETE; it calls two SECURITY DEFINER
-- functions that remove only what qualifies, inside the write pipeline's
-- commit (so each removal lands with the audit event that names it).

-- When the database recorded each tombstone, by its own clock: a purge
-- needs a tombstone older than the owner's minimum grace, whatever the
-- tombstone's own bytes say (a stolen service credential could write a
-- tombstone dated 1970, but not one the database recorded a week ago).
-- Tombstones written before this migration count from now.
ALTER TABLE tombstones ADD COLUMN recorded_at timestamptz NOT NULL DEFAULT now();

CREATE FUNCTION tessera_stamp_tombstone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.recorded_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER tombstones_recorded_at BEFORE INSERT ON tombstones
    FOR EACH ROW EXECUTE FUNCTION tessera_stamp_tombstone();

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

-- The owner's floor under every purge: a tombstone younger than this (by
-- the database's clock) is never purged, whatever the service asks.
-- Change it as the owner: UPDATE compaction_policy SET min_grace = '7 days'.
CREATE TABLE compaction_policy (
    only_row  boolean  PRIMARY KEY DEFAULT true CHECK (only_row),
    min_grace interval NOT NULL CHECK (min_grace >= interval '0')
);

INSERT INTO compaction_policy (only_row, min_grace) VALUES (true, interval '1 day');

-- The append-only triggers let one thing through: deletes made by the
-- compaction functions below, which set `tessera.compacting` for their
-- own statements. Only the owner holds DELETE, so the setting opens
-- nothing to the service role.
CREATE OR REPLACE FUNCTION tessera_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('tessera.compacting', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'tessera: % is append-only', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

-- The functions run as the owner, so their search path is fixed to the
-- schema they were made in with pg_temp last: a caller's temporary table
-- named `tombstones` must not stand in for the real one.
DO $migration$
BEGIN
    EXECUTE format($fn$
        -- Purges the records of `ids` whose tombstone is at or before
        -- `dead_by_ms` by its own time and older than the policy's
        -- minimum grace by the database's; returns the ids purged.
        CREATE FUNCTION tessera_purge(ids bytea[], dead_by_ms bigint)
        RETURNS SETOF bytea
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = %I, pg_temp AS $body$
        DECLARE
            eligible bytea[];
        BEGIN
            SELECT coalesce(array_agg(t.token_id), '{}') INTO eligible
            FROM tombstones t
            WHERE t.token_id = ANY(ids)
              AND t.recorded_at <= now() - (SELECT min_grace FROM compaction_policy)
              -- Tombstone layout 1: version, reason, time (u64, big-endian).
              AND get_byte(t.body, 0) = 1
              AND length(t.body) = 10
              AND ('x' || encode(substring(t.body FROM 3 FOR 8), 'hex'))::bit(64)::bigint
                  BETWEEN 0 AND dead_by_ms;
            PERFORM set_config('tessera.compacting', 'on', true);
            DELETE FROM fingerprints WHERE token_id = ANY(eligible);
            DELETE FROM sealed_versions WHERE token_id = ANY(eligible);
            DELETE FROM tombstones WHERE token_id = ANY(eligible);
            DELETE FROM records WHERE token_id = ANY(eligible);
            INSERT INTO purged_tokens (token_id) SELECT unnest(eligible);
            PERFORM set_config('tessera.compacting', 'off', true);
            RETURN QUERY SELECT unnest(eligible);
        END
        $body$
    $fn$, current_schema());

    EXECUTE format($fn$
        -- Drops the seal versions (ids[i], versions[i]) that are older than
        -- their record's newest; returns how many it dropped.
        CREATE FUNCTION tessera_drop_seal_versions(ids bytea[], versions integer[])
        RETURNS bigint
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = %I, pg_temp AS $body$
        DECLARE
            dropped bigint;
        BEGIN
            PERFORM set_config('tessera.compacting', 'on', true);
            DELETE FROM sealed_versions s
            USING unnest(ids, versions) AS d(token_id, version)
            WHERE s.token_id = d.token_id
              AND s.version = d.version
              AND s.version < (SELECT max(m.version) FROM sealed_versions m
                               WHERE m.token_id = d.token_id);
            GET DIAGNOSTICS dropped = ROW_COUNT;
            PERFORM set_config('tessera.compacting', 'off', true);
            RETURN dropped;
        END
        $body$
    $fn$, current_schema());
END
$migration$;

REVOKE ALL ON FUNCTION tessera_purge(bytea[], bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION tessera_drop_seal_versions(bytea[], integer[]) FROM PUBLIC;
