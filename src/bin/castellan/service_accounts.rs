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
