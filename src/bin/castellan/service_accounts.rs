//! `castellan service-accounts`: programmatic principals and their keys.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;

use castellan::config::Config;
use castellan::policy::Member;
use castellan::store::Actor;

use crate::{format_time, open_store};

#[derive(Subcommand)]
pub enum ServiceAccountsCommand {
    /// Create a service account and its first key (printed once; only its digest is stored).
    #[command(
        after_help = "Example:\n  castellan service-accounts create ci-bot\n  \
castellan access add --global serviceAccount:ci-bot --role roles/admin\n  \
curl -H \"Authorization: Bearer $KEY\" https://apps.example.com/.castellan/api/v1/policies/demo"
    )]
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List service accounts and their keys.
    #[command(after_help = "Example:\n  castellan service-accounts list")]
    List,
    /// Manage a service account's keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Add a key (printed once), e.g. to rotate: create the new one, deploy it, revoke the old one.
    #[command(after_help = "Example:\n  castellan service-accounts keys create ci-bot")]
    Create { name: String },
    /// List a service account's keys (ids only; secrets are never stored).
    #[command(after_help = "Example:\n  castellan service-accounts keys list ci-bot")]
    List { name: String },
    /// Revoke a key: it and every access token minted with it stop working at once.
    #[command(after_help = "Example:\n  castellan service-accounts keys revoke ci-bot AbCdEfGh")]
    Revoke { name: String, id: String },
}

pub async fn run(config: &Config, cmd: ServiceAccountsCommand) -> Result<ExitCode> {
    match cmd {
        ServiceAccountsCommand::Create { name, description } => {
            let member = Member::parse(&format!("serviceAccount:{name}"))?;
            let Member::ServiceAccount(name) = member else {
                bail!("`{name}` is not a service account name");
            };
            let key = open_store(config)
                .await?
                .create_service_account(&name, &description, &Actor::cli())
                .await?;
            println!(
                "created serviceAccount:{name}. Its key (shown only now; keep it secret):\n\n  {key}\n"
            );
            println!(
                "Grant it roles with `castellan access add APP serviceAccount:{name} --role ...`."
            );
        }
        ServiceAccountsCommand::Keys(KeysCommand::Create { name }) => {
            let key = open_store(config)
                .await?
                .create_key(&name, &Actor::cli())
                .await?;
            println!("new key for serviceAccount:{name} (shown only now):\n\n  {key}\n");
        }
        ServiceAccountsCommand::Keys(KeysCommand::List { name }) => {
            let keys = open_store(config)
                .await?
                .service_account_keys(&name)
                .await?;
            if keys.is_empty() {
                bail!("service account {name} has no keys (or does not exist)");
            }
            for k in keys {
                let state = match k.revoked_at {
                    Some(t) => format!("revoked {}", format_time(t)),
                    None => "active".into(),
                };
                println!("{}\tcreated {}\t{state}", k.id, format_time(k.created_at));
            }
        }
        ServiceAccountsCommand::Keys(KeysCommand::Revoke { name, id }) => {
            open_store(config)
                .await?
                .revoke_key(&name, &id, &Actor::cli())
                .await?;
            println!("revoked key {id} of serviceAccount:{name}");
        }
        ServiceAccountsCommand::List => {
            let store = open_store(config).await?;
            for sa in store.service_accounts().await? {
                let keys = store.service_account_keys(&sa.name).await?;
                let active = keys.iter().filter(|k| k.revoked_at.is_none()).count();
                println!(
                    "serviceAccount:{}\tcreated {}\t{active} active key(s)",
                    sa.name,
                    format_time(sa.created_at)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
