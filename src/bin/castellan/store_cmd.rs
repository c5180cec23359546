//! `castellan store`: moving an installation between stores.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use castellan::config::StoreLocation;
use castellan::store::Store;

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Copy everything (accounts, sessions, policies, groups, service accounts, requests, audit
    /// trail) from one store into a new, empty one, then count both sides.
    #[command(
        after_help = "Example (stop castellan first, so nothing changes while copying):\n  \
castellan store migrate --from sqlite:///var/lib/castellan/castellan.db \\\n    \
--to postgres://castellan:PASSWORD@db.internal:5432/castellan\n\n\
The destination gets castellan's schema if it has none and must hold no data yet. Signing and\n\
cookie keys move too, so sessions and issued assertions stay valid. Sign-ins in progress are not\n\
copied (they last minutes). Exit status 0 when every table's row count matches, 1 when not.\n\
Relative SQLite paths are relative to the current folder."
    )]
    Migrate {
        /// The store to copy from: sqlite://PATH or postgres://USER:PASSWORD@HOST:PORT/DB.
        #[arg(long, value_name = "URL")]
        from: String,
        /// The store to copy into (created or migrated to castellan's schema; must be empty).
        #[arg(long, value_name = "URL")]
        to: String,
    },
}

pub async fn run(cmd: StoreCommand) -> Result<ExitCode> {
    let StoreCommand::Migrate { from, to } = cmd;
    let here = std::env::current_dir()?;
    let from = StoreLocation::parse(&from, &here).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let to = StoreLocation::parse(&to, &here).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    if let StoreLocation::Sqlite(path) = &from {
        anyhow::ensure!(
            path.exists(),
            "--from: {} does not exist (a SQLite source must be an existing castellan store)",
            path.display()
        );
    }
    let source = Store::open(&from).await.context("opening --from")?;
    let dest = Store::open(&to).await.context("opening --to")?;
    eprintln!("copying {from} → {to}");
    let tty = std::io::stderr().is_terminal();
    let copied = source
        .copy_into(&dest, |table, done, total| {
            if tty {
                eprint!("\r  {table:<22} {done:>9} / {total}");
                if done == total {
                    eprintln!();
                }
            } else if done == total || done % 50_000 == 0 {
                eprintln!("  {table:<22} {done:>9} / {total}");
            }
            let _ = std::io::stderr().flush();
        })
        .await?;
    println!("{:<22} {:>10} {:>10}", "table", "source", "destination");
    for (table, a, b) in &copied.tables {
        let mark = if a == b { "" } else { "  MISMATCH" };
        println!("{table:<22} {a:>10} {b:>10}{mark}");
    }
    if copied.verified() {
        println!(
            "verified: every table holds the same number of rows. Point `store` at {to} and start castellan."
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: the row counts differ (was castellan still running on the source?): do not switch yet; empty the destination and run this again with castellan stopped"
        );
        Ok(ExitCode::FAILURE)
    }
}
