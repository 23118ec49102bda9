-- Shared state of the replicas (src/store/state.rs): principals added at
-- run time, pending approvals, admin sessions, locks and signals. Entries
-- are overwritten in place (they hold no card data; their history is in
-- the audit log); a deleted entry keeps its row, value NULL, so pollers of
-- the change feed see the deletion.
CREATE TABLE state (
    kind    text   NOT NULL,
    key     text   NOT NULL,
    -- The number of the entry's newest change.
    version bigint NOT NULL,
    -- NULL once deleted.
    value   bytea,
    PRIMARY KEY (kind, key)
);

CREATE UNIQUE INDEX state_by_version ON state (version);

-- The change counter. Writers update its one row in the transaction that
-- changes an entry, so they take numbers one at a time and commit in that
-- order: a poller that has seen change n has seen every change before it.
CREATE TABLE state_clock (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version  bigint  NOT NULL
);

INSERT INTO state_clock (only_row, version) VALUES (true, 0);
