-- The audit trail by person, indexed in bulk rather than on every write. An index on
-- audit (actor, at) put each new record where that person's records are: with many people
-- signed in, each record of a batch landed on a page of its own and cost a page write. The
-- server now copies each record's id, actor and time here every few seconds, many at once
-- (castellan::store::Store::index_audit); a query by person reads this table for what has been
-- copied and the few records after it from the trail itself.
DROP INDEX audit_by_actor;
CREATE TABLE audit_actors (
    id    INTEGER PRIMARY KEY,                -- audit.id
    actor TEXT NOT NULL,
    at    INTEGER NOT NULL
);
CREATE INDEX audit_actors_by_actor ON audit_actors (actor, at);
