//! Taking over a database made elsewhere, when an AuditManager asks for it explicitly:
//! - one kept by a deleted AuditManager (`deletionPolicy.database: Retain`): its database and
//!   roles carry that resource's marker, which is rewritten;
//! - one created by the original service (SPEC §5): no marker, one application role owning
//!   everything, `audit_events` without a migration history. Its objects pass to the owner
//!   role, and its schema is brought to this project's by moving every partition, rows and
//!   all, under a table created by the migrations.

use sqlx::{PgConnection, PgPool};

use super::ownership::{self, Object, Owner};
use super::roles::Roles;
use super::{Context, DbError, ident, literal};

/// What a database asked to be adopted is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// There is no such database: it is created as usual.
    Absent,
    /// It already carries this resource's marker.
    Ours,
    /// It carries another AuditManager's marker: the UID it names.
    Retained { uid: String },
    /// It carries no comment at all: the original's, owned by this role.
    Original { owner: String },
    /// It carries a comment that is no marker of this project: not taken.
    Foreign,
}

/// What the database named `database` is, for a resource whose marker is `mark`.
pub async fn inspect(pool: &PgPool, database: &str, mark: &str) -> Result<Found, DbError> {
    let row: Option<(Option<String>, String)> = sqlx::query_as(
        "SELECT shobj_description(d.oid, 'pg_database'), r.rolname::text
           FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = $1",
    )
    .bind(database)
    .fetch_optional(pool)
    .await
    .context(|| format!("inspecting database {database}"))?;
    Ok(match row {
        None => Found::Absent,
        Some((Some(c), _)) if c == mark => Found::Ours,
        Some((Some(c), _)) => match c.strip_prefix(&ownership::marker("")) {
            Some(uid) if !uid.is_empty() => Found::Retained {
                uid: uid.to_string(),
            },
            _ => Found::Foreign,
        },
        Some((None, owner)) => Found::Original { owner },
    })
}

/// Rewrites the marker of the retained database, and of each of the roles that carries the
/// old one, to `mark`, in one transaction.
pub async fn take_over_retained(
    pool: &PgPool,
    database: &str,
    roles: &Roles,
    old_uid: &str,
    mark: &str,
) -> Result<(), DbError> {
    let old = ownership::marker(old_uid);
    let mut sql = format!(
        "BEGIN; COMMENT ON DATABASE {} IS {};",
        ident(database),
        literal(mark)
    );
    for (role, _) in [&roles.owner, &roles.writer, &roles.reader] {
        match ownership::owner_of(pool, Object::Role(role), &old).await? {
            Owner::Marked => sql.push_str(&format!(
                " COMMENT ON ROLE {} IS {};",
                ident(role),
                literal(mark)
            )),
            Owner::Absent => {}
            Owner::Other => return Err(DbError::NotOurs(format!("role {role}"))),
        }
    }
    sql.push_str(" COMMIT;");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .context(|| format!("taking over retained database {database}"))?;
    Ok(())
}

/// Makes the original's database this resource's, on the admin connection: the three roles
/// are created and marked, the database is given to the owner role and marked. The objects
/// inside it pass to the owner with [`reassign_original`], on a connection to it.
pub async fn take_over_original(
    pool: &PgPool,
    database: &str,
    roles: &Roles,
    original_owner: &str,
    mark: &str,
) -> Result<(), DbError> {
    for (role, _) in [&roles.owner, &roles.writer, &roles.reader] {
        if ownership::owner_of(pool, Object::Role(role), mark).await? == Owner::Other {
            return Err(DbError::NotOurs(format!("role {role}")));
        }
    }
    super::roles::ensure_roles(pool, roles, mark).await?;
    let admin: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(pool)
        .await
        .context(|| "reading the admin role".into())?;
    // The admin acts as both roles to hand the objects over; an admin that is not a
    // superuser needs the right to grant itself the original's role.
    let sql = format!(
        "GRANT {original} TO {admin}; GRANT {owner} TO {admin};
         ALTER DATABASE {db} OWNER TO {owner};
         COMMENT ON DATABASE {db} IS {mark};",
        original = ident(original_owner),
        owner = ident(&roles.owner.0),
        admin = ident(&admin),
        db = ident(database),
        mark = literal(mark),
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .context(|| {
            format!(
                "taking over database {database} from role {original_owner} (the admin must be allowed to GRANT {original_owner} to itself)"
            )
        })?;
    Ok(())
}

/// On a connection to the adopted database as the admin: every table, partition, sequence
/// and view of the `public` schema owned by the original's role passes to the owner role.
/// Only this database's objects move (unlike `REASSIGN OWNED`, which would also take the
/// original role's other databases).
pub async fn reassign_original(
    conn: &mut PgConnection,
    original_owner: &str,
    owner: &str,
) -> Result<u64, DbError> {
    let relations: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, c.relkind::text FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace
           JOIN pg_roles r ON r.oid = c.relowner
          WHERE n.nspname = 'public' AND r.rolname = $1 AND c.relkind IN ('r', 'p', 'S', 'v', 'm')",
    )
    .bind(original_owner)
    .fetch_all(&mut *conn)
    .await
    .context(|| format!("listing what {original_owner} owns"))?;
    let mut sql = String::from("BEGIN;");
    for (name, kind) in &relations {
        let what = match kind.as_str() {
            "S" => "SEQUENCE",
            "v" => "VIEW",
            "m" => "MATERIALIZED VIEW",
            _ => "TABLE",
        };
        sql.push_str(&format!(
            " ALTER {what} {} OWNER TO {};",
            ident(name),
            ident(owner)
        ));
    }
    sql.push_str(" COMMIT;");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .context(|| format!("handing {original_owner}'s tables to {owner}"))?;
    Ok(relations.len() as u64)
}

/// The original's table while its partitions move (see [`set_aside_original`]).
const SET_ASIDE: &str = "audit_events_original";

/// Before the migrations, as the owner: when `audit_events` exists without a migration
/// history (the original's schema), it is renamed out of the way, with its primary-key
/// index, so the migrations create this project's table. Says whether it did.
pub async fn set_aside_original(conn: &mut PgConnection) -> Result<bool, DbError> {
    let original: bool = sqlx::query_scalar(
        "SELECT to_regclass('public.audit_events') IS NOT NULL
            AND to_regclass('public._sqlx_migrations') IS NULL
            AND to_regclass('public.audit_events_original') IS NULL",
    )
    .fetch_one(&mut *conn)
    .await
    .context(|| "looking for the original's schema".into())?;
    if !original {
        return Ok(false);
    }
    // The primary key's index would clash by name with the new table's.
    let sql = format!(
        "BEGIN;
         ALTER TABLE audit_events RENAME TO {SET_ASIDE};
         DO $$ DECLARE pk text;
         BEGIN
           SELECT conname INTO pk FROM pg_constraint
            WHERE conrelid = '{SET_ASIDE}'::regclass AND contype = 'p';
           IF pk IS NOT NULL THEN
             EXECUTE format('ALTER TABLE {SET_ASIDE} RENAME CONSTRAINT %I TO %I', pk, '{SET_ASIDE}_pkey');
           END IF;
         END $$;
         COMMIT;"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .context(|| "setting the original's audit_events aside".into())?;
    Ok(true)
}

/// What moving the original's partitions did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moved {
    pub partitions: Vec<String>,
    pub rows: i64,
}

/// After the migrations, as the owner: every partition of the set-aside original table, rows
/// and all, is detached, brought to this project's columns and attached to `audit_events`
/// under the same bounds, in one transaction; the empty original table is dropped. Rows of
/// the older release (no `reason` or `details`, the whole CloudEvent in `envelope`) get both
/// from the envelope, which is kept as `original_envelope`. Attaching checks every row
/// against this project's constraints (`outcome` among success, failure, denied); a row that
/// fails stops the move, and nothing changes. No-op when nothing was set aside.
pub async fn move_original_partitions(conn: &mut PgConnection) -> Result<Moved, DbError> {
    let pending: bool = sqlx::query_scalar("SELECT to_regclass('public.' || $1) IS NOT NULL")
        .bind(SET_ASIDE)
        .fetch_one(&mut *conn)
        .await
        .context(|| "looking for the original's table".into())?;
    if !pending {
        return Ok(Moved::default());
    }
    let partitions: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid)
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
          WHERE i.inhparent = to_regclass('public.' || $1) ORDER BY 1",
    )
    .bind(SET_ASIDE)
    .fetch_all(&mut *conn)
    .await
    .context(|| "listing the original's partitions".into())?;
    let original_columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
          WHERE table_schema = 'public' AND table_name = $1",
    )
    .bind(SET_ASIDE)
    .fetch_all(&mut *conn)
    .await
    .context(|| "reading the original's columns".into())?;
    let has = |c: &str| original_columns.iter().any(|o| o == c);
    let mut sql = String::from("BEGIN;");
    if has("envelope") {
        sql.push_str(" ALTER TABLE audit_events ADD COLUMN IF NOT EXISTS original_envelope jsonb;");
    }
    let mut moved = Moved::default();
    for (partition, bound) in &partitions {
        let p = ident(partition);
        sql.push_str(&format!(" ALTER TABLE {SET_ASIDE} DETACH PARTITION {p};"));
        // Its own copies of the original's keys and indexes go (attaching creates this
        // project's); this project's CHECK constraints, which attaching requires, are added
        // and checked against every row.
        let name = literal(partition);
        sql.push_str(&format!(
            " DO $$ DECLARE c record; BEGIN
                FOR c IN SELECT conname FROM pg_constraint WHERE conrelid = {name}::regclass AND contype IN ('p', 'u') LOOP
                  EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', {name}, c.conname);
                END LOOP;
                FOR c IN SELECT indexrelid::regclass::text AS name FROM pg_index WHERE indrelid = {name}::regclass LOOP
                  EXECUTE format('DROP INDEX %s', c.name);
                END LOOP;
                FOR c IN SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
                          WHERE conrelid = 'audit_events'::regclass AND contype = 'c' LOOP
                  EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', {name}, c.conname, c.def);
                END LOOP;
              END $$;"
        ));
        if has("envelope") {
            for (column, kind) in [("reason", "text"), ("details", "jsonb")] {
                if !has(column) {
                    sql.push_str(&format!(" ALTER TABLE {p} ADD COLUMN {column} {kind};"));
                }
            }
            sql.push_str(&format!(
                " UPDATE {p} SET
                    reason = COALESCE(reason, envelope->'data'->>'reason'),
                    details = COALESCE(details, {details})
                  WHERE envelope IS NOT NULL;
                  ALTER TABLE {p} ALTER COLUMN envelope DROP NOT NULL;
                  ALTER TABLE {p} RENAME COLUMN envelope TO original_envelope;",
                details = DETAILS_FROM_ENVELOPE
            ));
        }
        for (column, kind) in [
            ("extensions", "jsonb"),
            ("normalized", "text[]"),
            ("principal", "text"),
        ] {
            if !has(column) {
                sql.push_str(&format!(" ALTER TABLE {p} ADD COLUMN {column} {kind};"));
            }
        }
        sql.push_str(&format!(
            " ALTER TABLE audit_events ATTACH PARTITION {p} {bound};"
        ));
        moved.partitions.push(partition.clone());
    }
    sql.push_str(&format!(" DROP TABLE {SET_ASIDE}; COMMIT;"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut *conn)
        .await
        .context(|| {
            format!(
                "moving the original's partitions ({}) under audit_events; a row that breaks this schema's rules (outcome success, failure or denied) stops the move and leaves them where they were",
                moved.partitions.join(", ")
            )
        })?;
    moved.rows = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&mut *conn)
        .await
        .context(|| "counting the rows".into())?;
    Ok(moved)
}

/// `details` as the ingest maps it (see `event::row::to_row`), from the older release's
/// stored CloudEvent: `data` without action, outcome, reason and the actor's and resource's
/// id and type; NULL when nothing is left.
const DETAILS_FROM_ENVELOPE: &str = "NULLIF(
    ((envelope->'data') - 'action' - 'outcome' - 'reason' - 'actor' - 'resource')
    || CASE WHEN jsonb_typeof(envelope->'data'->'actor') = 'object'
             AND (envelope->'data'->'actor') - 'id' - 'type' <> '{}'::jsonb
            THEN jsonb_build_object('actor', (envelope->'data'->'actor') - 'id' - 'type')
            ELSE '{}'::jsonb END
    || CASE WHEN jsonb_typeof(envelope->'data'->'resource') = 'object'
             AND (envelope->'data'->'resource') - 'id' - 'type' <> '{}'::jsonb
            THEN jsonb_build_object('resource', (envelope->'data'->'resource') - 'id' - 'type')
            ELSE '{}'::jsonb END,
    '{}'::jsonb)";
