-- The audit event store (SPEC §2.3): one row per CloudEvent, identity (source, id),
-- range-partitioned by month on occurred_at. Partitions (audit_events_YYYY_MM) are created and
-- dropped by `audit-manager maintain`, never here.

CREATE TABLE audit_events (
    id            text        NOT NULL,
    source        text        NOT NULL,
    type          text        NOT NULL,
    subject       text,
    occurred_at   timestamptz NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now(),
    actor_type    text        NOT NULL,
    actor_id      text        NOT NULL,
    resource_type text,
    resource_id   text,
    action        text        NOT NULL,
    outcome       text        NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    reason        text,
    trace_id      text,
    details       jsonb,
    PRIMARY KEY (source, id, occurred_at)
) PARTITION BY RANGE (occurred_at);

COMMENT ON TABLE audit_events IS
    'Append-only audit events (CloudEvents). Identity is (source, id); partitions audit_events_YYYY_MM are managed by audit-manager maintain.';

-- The investigator queries of the runbook.
CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at);
CREATE INDEX audit_events_actor_idx ON audit_events (actor_id, occurred_at);
CREATE INDEX audit_events_resource_idx ON audit_events (resource_type, resource_id, occurred_at);
CREATE INDEX audit_events_type_idx ON audit_events (type, occurred_at);
CREATE INDEX audit_events_trace_idx ON audit_events (trace_id) WHERE trace_id IS NOT NULL;

-- Append-only guard. Privileges already keep the writer and reader from UPDATE and DELETE;
-- this also stops the owner unless it opts in for a maintenance step within its transaction
-- (SET LOCAL audit_manager.maintenance = 'on'). Dropping a whole expired partition is DDL
-- and is not affected.
CREATE FUNCTION audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('audit_manager.maintenance', true) = 'on'
       AND pg_has_role(current_user, (SELECT tableowner FROM pg_tables
                                      WHERE schemaname = TG_TABLE_SCHEMA
                                        AND tablename = 'audit_events'), 'MEMBER') THEN
        RETURN COALESCE(OLD, NEW);
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'audit rows are never changed; expired months are dropped whole by audit-manager maintain';
END;
$$;

CREATE TRIGGER audit_events_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
