-- Who sent each event, as authenticated by the ingest (auth.mode jwt): `<issuer>/<principal>`,
-- e.g. `cluster/system:serviceaccount:registry:api` or `keycloak/registry-client`. NULL for
-- events accepted without authentication (auth.mode none, and every row stored before).
-- `source` is what the event claims; `principal` is who proved to have sent it.
-- Adding a nullable column without a default changes no stored row: instant on any size.
ALTER TABLE audit_events ADD COLUMN principal text;

COMMENT ON COLUMN audit_events.principal IS
    'The authenticated sender (<issuer>/<principal>) when the ingest verified a token; NULL when authentication was off.';
