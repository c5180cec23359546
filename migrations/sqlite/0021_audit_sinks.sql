-- How far each audit sink has delivered the audit trail: the id of the last record it took.
CREATE TABLE audit_cursors (
    sink TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
