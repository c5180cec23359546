//! The schema migrations, built into the binary: one list per backend, in file order. Each is
//! handed to sqlx exactly as its `migrate!` macro would (same version, description, SQL and so the
//! same checksum, which databases migrated by earlier builds recorded), without compiling sqlx's
//! macros and, for them, a second copy of its drivers and of SQLite's C code.
//!
//! A new migration is a new file in `migrations/<backend>/` and a line here; a unit test fails
//! when the two disagree.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

const SQLITE: &[(&str, &str)] = &[
    (
        "0001_core.sql",
        include_str!("../../migrations/sqlite/0001_core.sql"),
    ),
    (
        "0002_policies_groups_audit.sql",
        include_str!("../../migrations/sqlite/0002_policies_groups_audit.sql"),
    ),
    (
        "0003_access_requests.sql",
        include_str!("../../migrations/sqlite/0003_access_requests.sql"),
    ),
    (
        "0004_cli_codes.sql",
        include_str!("../../migrations/sqlite/0004_cli_codes.sql"),
    ),
    (
        "0005_key_ring.sql",
        include_str!("../../migrations/sqlite/0005_key_ring.sql"),
    ),
    (
        "0006_acme.sql",
        include_str!("../../migrations/sqlite/0006_acme.sql"),
    ),
    (
        "0007_host_handoff.sql",
        include_str!("../../migrations/sqlite/0007_host_handoff.sql"),
    ),
    (
        "0008_reauth.sql",
        include_str!("../../migrations/sqlite/0008_reauth.sql"),
    ),
    (
        "0009_logout.sql",
        include_str!("../../migrations/sqlite/0009_logout.sql"),
    ),
    (
        "0010_totp.sql",
        include_str!("../../migrations/sqlite/0010_totp.sql"),
    ),
    (
        "0011_hd.sql",
        include_str!("../../migrations/sqlite/0011_hd.sql"),
    ),
    (
        "0012_passkeys.sql",
        include_str!("../../migrations/sqlite/0012_passkeys.sql"),
    ),
    (
        "0013_session_proof.sql",
        include_str!("../../migrations/sqlite/0013_session_proof.sql"),
    ),
    (
        "0014_backchannel_logout.sql",
        include_str!("../../migrations/sqlite/0014_backchannel_logout.sql"),
    ),
    (
        "0015_directory_groups.sql",
        include_str!("../../migrations/sqlite/0015_directory_groups.sql"),
    ),
    (
        "0016_scim.sql",
        include_str!("../../migrations/sqlite/0016_scim.sql"),
    ),
    (
        "0017_revalidation.sql",
        include_str!("../../migrations/sqlite/0017_revalidation.sql"),
    ),
    (
        "0018_sign_in_context.sql",
        include_str!("../../migrations/sqlite/0018_sign_in_context.sql"),
    ),
    (
        "0019_step_up.sql",
        include_str!("../../migrations/sqlite/0019_step_up.sql"),
    ),
    (
        "0020_provider_tokens.sql",
        include_str!("../../migrations/sqlite/0020_provider_tokens.sql"),
    ),
    (
        "0021_audit_sinks.sql",
        include_str!("../../migrations/sqlite/0021_audit_sinks.sql"),
    ),
    (
        "0022_audit_actors.sql",
        include_str!("../../migrations/sqlite/0022_audit_actors.sql"),
    ),
];

const POSTGRES: &[(&str, &str)] = &[
    (
        "0001_schema.sql",
        include_str!("../../migrations/postgres/0001_schema.sql"),
    ),
    (
        "0002_key_ring.sql",
        include_str!("../../migrations/postgres/0002_key_ring.sql"),
    ),
    (
        "0003_acme.sql",
        include_str!("../../migrations/postgres/0003_acme.sql"),
    ),
    (
        "0004_host_handoff.sql",
        include_str!("../../migrations/postgres/0004_host_handoff.sql"),
    ),
    (
        "0005_reauth.sql",
        include_str!("../../migrations/postgres/0005_reauth.sql"),
    ),
    (
        "0006_logout.sql",
        include_str!("../../migrations/postgres/0006_logout.sql"),
    ),
    (
        "0007_totp.sql",
        include_str!("../../migrations/postgres/0007_totp.sql"),
    ),
    (
        "0008_hd.sql",
        include_str!("../../migrations/postgres/0008_hd.sql"),
    ),
    (
        "0009_passkeys.sql",
        include_str!("../../migrations/postgres/0009_passkeys.sql"),
    ),
    (
        "0010_session_proof.sql",
        include_str!("../../migrations/postgres/0010_session_proof.sql"),
    ),
    (
        "0011_backchannel_logout.sql",
        include_str!("../../migrations/postgres/0011_backchannel_logout.sql"),
    ),
    (
        "0012_directory_groups.sql",
        include_str!("../../migrations/postgres/0012_directory_groups.sql"),
    ),
    (
        "0013_scim.sql",
        include_str!("../../migrations/postgres/0013_scim.sql"),
    ),
    (
        "0014_revalidation.sql",
        include_str!("../../migrations/postgres/0014_revalidation.sql"),
    ),
    (
        "0015_sign_in_context.sql",
        include_str!("../../migrations/postgres/0015_sign_in_context.sql"),
    ),
    (
        "0016_step_up.sql",
        include_str!("../../migrations/postgres/0016_step_up.sql"),
    ),
    (
        "0017_provider_tokens.sql",
        include_str!("../../migrations/postgres/0017_provider_tokens.sql"),
    ),
    (
        "0018_audit_sinks.sql",
        include_str!("../../migrations/postgres/0018_audit_sinks.sql"),
    ),
    (
        "0019_audit_actors.sql",
        include_str!("../../migrations/postgres/0019_audit_actors.sql"),
    ),
];

pub fn sqlite() -> Migrator {
    migrator(SQLITE)
}

pub fn postgres() -> Migrator {
    migrator(POSTGRES)
}

/// `NNNN_some_words.sql` → version NNNN, description "some words", as sqlx names them.
fn migrator(files: &'static [(&'static str, &'static str)]) -> Migrator {
    let migrations = files
        .iter()
        .map(|(name, sql)| {
            let (version, rest) = name.split_once('_').expect("NNNN_description.sql");
            let description = rest.trim_end_matches(".sql").replace('_', " ");
            Migration::new(
                version.parse().expect("a numeric version"),
                Cow::Owned(description),
                MigrationType::Simple,
                sql.into_sql_str(),
                sql.starts_with("-- no-transaction"),
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_listed_in_order() {
        for (kind, listed) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(kind);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(".sql"))
                .collect();
            files.sort();
            let names: Vec<&str> = listed.iter().map(|(n, _)| *n).collect();
            assert_eq!(
                names, files,
                "{kind}: list every file of migrations/{kind} here"
            );
        }
        let m = sqlite();
        let first = m.iter().next().unwrap();
        assert_eq!((first.version, first.description.as_ref()), (1, "core"));
        assert_eq!(first.migration_type, MigrationType::Simple);
    }
}
