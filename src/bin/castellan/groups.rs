//! `castellan groups`: castellan's own groups.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;

use castellan::config::Config;
use castellan::policy::valid_group;
use castellan::store::Actor;

use crate::open_store;
use crate::users::normalize_email;

#[derive(Subcommand)]
pub enum GroupsCommand {
    /// Create a group; grant it access with `castellan access add APP group:NAME`.
    #[command(
        after_help = "Example:\n  castellan groups create analysts --description 'Data team'"
    )]
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Delete a group (its members lose what it granted within a second).
    #[command(after_help = "Example:\n  castellan groups delete analysts")]
    Delete { name: String },
    /// Add a person to a group.
    #[command(
        name = "add-member",
        after_help = "Example:\n  castellan groups add-member analysts alice@example.com"
    )]
    AddMember { name: String, email: String },
    /// Remove a person from a group (effective within a second, open WebSockets included).
    #[command(
        name = "remove-member",
        after_help = "Example:\n  castellan groups remove-member analysts alice@example.com"
    )]
    RemoveMember { name: String, email: String },
    /// List groups and their members.
    #[command(after_help = "Examples:\n  castellan groups list\n  castellan groups list --json")]
    List {
        #[arg(long)]
        json: bool,
    },
}

fn check_name(name: &str) -> Result<()> {
    if !valid_group(name) {
        bail!(
            "`{name}` is not a group name: use letters, digits, spaces and . _ @ - / : (at most 256 characters)"
        );
    }
    Ok(())
}

pub async fn run(config: &Config, cmd: GroupsCommand) -> Result<ExitCode> {
    let actor = Actor::cli();
    match cmd {
        GroupsCommand::Create { name, description } => {
            check_name(&name)?;
            open_store(config)
                .await?
                .create_group(&name, &description, &actor)
                .await?;
            println!(
                "created group {name}; add people with `castellan groups add-member {name} EMAIL`"
            );
        }
        GroupsCommand::Delete { name } => {
            open_store(config)
                .await?
                .delete_group(&name, &actor)
                .await?;
            println!("deleted group {name}");
        }
        GroupsCommand::AddMember { name, email } => {
            let email = normalize_email(&email)?;
            if open_store(config)
                .await?
                .set_group_member(&name, &email, true, &actor)
                .await?
            {
                println!("{email} is now in group {name}");
            } else {
                println!("{email} was already in group {name}; nothing changed");
            }
        }
        GroupsCommand::RemoveMember { name, email } => {
            let email = normalize_email(&email)?;
            if !open_store(config)
                .await?
                .set_group_member(&name, &email, false, &actor)
                .await?
            {
                bail!("{email} is not in group {name}");
            }
            println!("{email} is no longer in group {name}");
        }
        GroupsCommand::List { json } => {
            let groups = open_store(config).await?.groups().await?;
            if json {
                println!("{}", serde_json::to_string(&groups)?);
            } else if groups.is_empty() {
                println!("no groups yet; create one with `castellan groups create NAME`");
            } else {
                for g in groups {
                    println!(
                        "{}\t{} member(s)\t{}",
                        g.name,
                        g.members.len(),
                        g.members.join(", ")
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
