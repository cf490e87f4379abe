-- What SPEC §2.2 keeps but the first schema did not store, and what the ingest had to change
-- to accept an event the original service accepted.
--   extensions: the CloudEvents extension attributes (name → value), NULL when there are none.
--   normalized: the normalizations applied (null_dropped, time_defaulted,
--               actor_ip_not_an_address, actor_ip_truncated, actor_id_empty), NULL when none;
--               e.g. WHERE 'time_defaulted' = ANY (normalized) finds rows whose occurred_at is
--               the receipt time, not a time the emitter sent.
ALTER TABLE audit_events ADD COLUMN extensions jsonb;
ALTER TABLE audit_events ADD COLUMN normalized text[];

COMMENT ON COLUMN audit_events.extensions IS
    'CloudEvents extension attributes of the event, as sent; NULL when none.';
COMMENT ON COLUMN audit_events.normalized IS
    'How the event was normalized to be accepted (e.g. time_defaulted: occurred_at is the receipt time); NULL when it was stored as sent.';
