//! `castellan users`: local accounts.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;

use castellan::config::Config;
use castellan::identity::local;
use castellan::policy::snapshot::Resource;
use castellan::policy::{Member, Role};
use castellan::store::Actor;

use crate::{format_time, open_store};

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Create a local account; prompts for the password.
    #[command(after_help = "Examples:\n  castellan users add admin@example.com\n  \
printf '%s\\n' \"$PASSWORD\" | castellan users add ci@example.com --password-stdin\n\n\
A new account has access to nothing: share an app with `castellan access add APP user:EMAIL`.\n\
The first administrator: castellan users add admin@example.com --admin   (roles/admin on the global policy;\n\
the console is at /.castellan/admin/)")]
    Add {
        email: String,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
        /// Also make the account an administrator of everything (roles/admin on the global policy).
        #[arg(long)]
        admin: bool,
    },
    /// Change a local account's password.
    #[command(after_help = "Example:\n  castellan users set-password admin@example.com")]
    SetPassword {
        email: String,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a local account and end its sessions.
    #[command(after_help = "Example:\n  castellan users remove bob@example.com")]
    Remove { email: String },
    /// List local accounts.
    #[command(after_help = "Example:\n  castellan users list")]
    List,
}

fn read_new_password(email: &str, from_stdin: bool) -> Result<String> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\r', '\n']).to_string()
    } else {
        if !std::io::stdin().is_terminal() {
            bail!(
                "no terminal to ask for the password: pass it on standard input with --password-stdin"
            );
        }
        let p = rpassword::prompt_password(format!("Password for {email}: "))?;
        let again = rpassword::prompt_password("Repeat the password: ")?;
        if p != again {
            bail!("the two passwords differ; nothing was changed");
        }
        p
    };
    local::check_new_password(&password).map_err(anyhow::Error::msg)?;
    Ok(password)
}

pub fn normalize_email(email: &str) -> Result<String> {
    let e = email.trim().to_ascii_lowercase();
    if !castellan::policy::is_email(&e) {
        bail!("`{email}` is not an email address: write e.g. alice@example.com");
    }
    Ok(e)
}

pub async fn run(config: &Config, cmd: UsersCommand) -> Result<ExitCode> {
    if !config.local_accounts && !matches!(cmd, UsersCommand::List | UsersCommand::Remove { .. }) {
        eprintln!(
            "note: local_accounts = false in the configuration, so local accounts cannot sign in until it is turned on"
        );
    }
    match cmd {
        UsersCommand::Add {
            email,
            password_stdin,
            admin,
        } => {
            let email = normalize_email(&email)?;
            let password = read_new_password(&email, password_stdin)?;
            let hash = tokio::task::spawn_blocking(move || local::hash_password(&password)).await?;
            let store = open_store(config).await?;
            store.add_user(&email, &hash).await?;
            if admin {
                castellan::admin::ops::add(
                    &store,
                    &Resource::Global,
                    Role::Admin,
                    Member::parse(&format!("user:{email}"))?,
                    None,
                    &Actor::cli(),
                )
                .await?;
                println!(
                    "created local account {email}, an administrator of everything: the console is at /.castellan/admin/"
                );
            } else {
                println!(
                    "created local account {email}. Share an app with it: castellan access add APP user:{email}"
                );
            }
        }
        UsersCommand::SetPassword {
            email,
            password_stdin,
        } => {
            let email = normalize_email(&email)?;
            let store = open_store(config).await?;
            if store.password_hash(&email).await?.is_none() {
                bail!(
                    "there is no local account {email}; create it with `castellan users add {email}`"
                );
            }
            let password = read_new_password(&email, password_stdin)?;
            let hash = tokio::task::spawn_blocking(move || local::hash_password(&password)).await?;
            store.set_password(&email, &hash, &Actor::cli()).await?;
            println!("changed the password of {email}");
        }
        UsersCommand::Remove { email } => {
            let email = normalize_email(&email)?;
            let store = open_store(config).await?;
            if !store.remove_user(&email).await? {
                bail!("there is no local account {email}");
            }
            println!("removed local account {email} and ended its sessions");
        }
        UsersCommand::List => {
            let store = open_store(config).await?;
            for (email, created) in store.list_users().await? {
                println!("{email}\tcreated {}", format_time(created));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
