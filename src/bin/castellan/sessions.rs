//! `castellan sessions`: who is signed in, and ending sessions.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;

use castellan::config::Config;
use castellan::store::Actor;

use crate::users::normalize_email;
use crate::{format_time, open_store};

#[derive(Subcommand)]
pub enum SessionsCommand {
    /// List active sessions.
    #[command(
        after_help = "Examples:\n  castellan sessions list\n  castellan sessions list --user alice@example.com --json"
    )]
    List {
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// End a session (by the ID `sessions list` shows) or all of a person's sessions.
    #[command(
        after_help = "Examples:\n  castellan sessions revoke 3q2+7wJH\n  castellan sessions revoke --user alice@example.com\n\n\
The person is signed out at once; their open WebSockets and streams close within a second."
    )]
    Revoke {
        /// The ID (or its first 8+ characters) from `castellan sessions list`; IDs may start with `-`.
        #[arg(
            required_unless_present = "user",
            conflicts_with = "user",
            allow_hyphen_values = true
        )]
        id: Option<String>,
        #[arg(long, value_name = "EMAIL")]
        user: Option<String>,
    },
}

pub async fn run(config: &Config, cmd: SessionsCommand) -> Result<ExitCode> {
    match cmd {
        SessionsCommand::List { user, json } => {
            let user = user.map(|u| normalize_email(&u)).transpose()?;
            let sessions = open_store(config)
                .await?
                .list_sessions(user.as_deref())
                .await?;
            if json {
                println!("{}", serde_json::to_string(&sessions)?);
            } else if sessions.is_empty() {
                println!("no active sessions");
            } else {
                for s in sessions {
                    println!(
                        "{}\t{}\t{}\tsince {}\tlast seen {}\tfrom {}",
                        s.id,
                        s.email,
                        s.provider,
                        format_time(s.created_at),
                        format_time(s.last_seen),
                        s.client_ip
                    );
                }
            }
        }
        SessionsCommand::Revoke { id, user } => {
            let user = user.map(|u| normalize_email(&u)).transpose()?;
            if let Some(id) = &id
                && id.len() < 8
            {
                bail!(
                    "give at least 8 characters of the session ID shown by `castellan sessions list`"
                );
            }
            let store = open_store(config).await?;
            let n = store
                .revoke_sessions(id.as_deref(), user.as_deref(), &Actor::cli())
                .await?;
            if n == 0 {
                bail!("no matching session (see `castellan sessions list`)");
            }
            println!("ended {n} session(s)");
        }
    }
    Ok(ExitCode::SUCCESS)
}
