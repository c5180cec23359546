//! `castellan access`, `castellan policy` and `castellan check`: policies as in Cloud IAM.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand, ValueEnum};

use castellan::admin::ops;
use castellan::clock::parse_rfc3339;
use castellan::config::Config;
use castellan::policy::condition::Context;
use castellan::policy::snapshot::{Resource, Snapshot, Who};
use castellan::policy::{Document, Member, Policy, Role};
use castellan::store::Actor;

use crate::open_store;

const MEMBERS_HELP: &str = "Members:\n  user:EMAIL              one person (case-insensitive)\n  \
group:NAME              a castellan group, or a group your provider asserts (groups_claim)\n  \
domain:DOMAIN           everyone whose email is in DOMAIN\n  \
serviceAccount:NAME     a programmatic caller\n  \
allAuthenticatedUsers   anyone who can sign in\n  \
allUsers                anyone at all: makes the app public (needs --yes)";

/// Which policy a command works on: an app's, or (with --global) the one that applies to every app.
#[derive(Args)]
pub struct Target {
    /// Work on the global policy, which applies to every app (roles/admin there manages everything).
    #[arg(long)]
    global: bool,
}

#[derive(Subcommand)]
pub enum AccessCommand {
    /// Add a member to a role on an app (or globally), optionally with a condition or an expiry.
    #[command(after_help = const_format_add())]
    Add {
        /// APP MEMBER, or just MEMBER with --global.
        #[arg(num_args = 1..=2, required = true, value_names = ["APP", "MEMBER"])]
        args: Vec<String>,
        #[command(flatten)]
        target: Target,
        /// The role: roles/accessor (open a web app), roles/tunnelAccessor (open tunnels to a TCP
        /// app) or roles/admin (manage its policy). Default: the one the app needs. gcloud's
        /// roles/iap.httpsResourceAccessor, roles/iap.tunnelResourceAccessor and roles/iap.admin
        /// are accepted.
        #[arg(long, value_name = "ROLE")]
        role: Option<String>,
        /// A condition in castellan's CEL subset, e.g. 'request.path.startsWith("/reports")'.
        #[arg(long, value_name = "EXPR")]
        condition: Option<String>,
        /// A title for the condition (shown in listings and the audit trail).
        #[arg(long, value_name = "TITLE")]
        condition_title: Option<String>,
        /// Access ends at this time: a duration (7d, 12h), a date (2027-01-01) or a timestamp.
        #[arg(long, value_name = "WHEN")]
        expires: Option<String>,
        /// Confirm making the app public (allUsers).
        #[arg(long)]
        yes: bool,
    },
    /// Remove a member from a role (access ends within a second, open WebSockets included).
    #[command(
        after_help = "Examples:\n  castellan access remove demo user:alice@example.com\n  \
castellan access remove demo group:analysts --condition-title reports-only\n  \
castellan access remove --global user:root@example.com --role roles/admin"
    )]
    Remove {
        /// APP MEMBER, or just MEMBER with --global.
        #[arg(num_args = 1..=2, required = true, value_names = ["APP", "MEMBER"])]
        args: Vec<String>,
        #[command(flatten)]
        target: Target,
        /// The role (default: the one the app needs: roles/accessor, or roles/tunnelAccessor for
        /// a TCP app).
        #[arg(long, value_name = "ROLE")]
        role: Option<String>,
        /// Only from the binding whose condition has this title.
        #[arg(long, value_name = "TITLE")]
        condition_title: Option<String>,
    },
    /// Show an app's (or the global) bindings.
    #[command(
        after_help = "Examples:\n  castellan access list demo\n  castellan access list demo --json\n  castellan access list --global"
    )]
    List {
        app: Option<String>,
        #[command(flatten)]
        target: Target,
        /// Print JSON: {"app": ..., "public": bool, "members": [{"member", "role", "condition"}]}
        #[arg(long)]
        json: bool,
    },
}

fn const_format_add() -> String {
    format!(
        "{MEMBERS_HELP}\n\nExamples:\n  castellan access add demo user:alice@example.com\n  \
castellan access add demo domain:example.com\n  \
castellan access add demo group:analysts --condition 'request.path.startsWith(\"/reports\")' --condition-title reports-only\n  \
castellan access add demo user:contractor@partner.org --expires 7d\n  \
castellan access add --global user:root@example.com --role roles/admin\n\n\
Conditions can use request.path, request.host, request.method, request.time, origin.ip,\n\
timestamp(\"2027-01-01T00:00:00Z\"), inIpRange(origin.ip, \"10.0.0.0/8\"), startsWith/endsWith/contains,\n\
== != < <= > >= in, && || ! and parentheses."
    )
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Print a policy document (with its etag), as `gcloud iap web get-iam-policy` does.
    #[command(
        after_help = "Examples:\n  castellan policy get demo > demo-policy.json\n  castellan policy get --global --format table"
    )]
    Get {
        app: Option<String>,
        #[command(flatten)]
        target: Target,
        #[arg(long, value_enum, default_value = "json")]
        format: Format,
    },
    /// Replace a policy with a document (JSON or YAML); refuses if it changed since you read it.
    #[command(
        after_help = "Example:\n  castellan policy get demo > p.json && $EDITOR p.json && castellan policy set demo p.json\n\n\
The document's etag must match the stored policy's (someone else's change would otherwise be lost);\n\
--force skips that check. A document that makes the app public (allUsers) needs --yes."
    )]
    Set {
        /// APP FILE, or just FILE with --global.
        #[arg(num_args = 1..=2, required = true, value_names = ["APP", "FILE"])]
        args: Vec<String>,
        #[command(flatten)]
        target: Target,
        /// Overwrite even if the policy changed since the document was read.
        #[arg(long)]
        force: bool,
        /// Confirm making the app public (allUsers).
        #[arg(long)]
        yes: bool,
    },
    /// Import what `gcloud iap web get-iam-policy` printed (JSON or YAML) as an app's policy.
    #[command(
        name = "import-gcloud",
        after_help = "Example:\n  gcloud iap web get-iam-policy --resource-type=backend-services --service=dash --format=json > iap.json\n  \
castellan policy import-gcloud demo iap.json\n\n\
Every binding is reported: imported as is, translated (roles/iap.httpsResourceAccessor is\n\
roles/accessor, roles/iap.tunnelResourceAccessor roles/tunnelAccessor, roles/iap.admin roles/admin),\n\
or refused with the reason (a role castellan does not have, a deleted or federated member, a\n\
condition castellan cannot check such as request.auth.access_levels). Anything refused stops the\n\
import unless --partial is given; the app's policy is then replaced by what could be imported."
    )]
    ImportGcloud {
        app: String,
        file: PathBuf,
        /// Import what can be imported even if some bindings or members are refused.
        #[arg(long)]
        partial: bool,
        /// Confirm making the app public (allUsers).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    Json,
    Table,
}

#[derive(Args)]
#[command(after_help = "Examples:\n  castellan check demo alice@example.com\n  \
castellan check demo alice@example.com --path /reports/q --ip 10.1.2.3\n  \
castellan check demo dave@example.com --group analysts --at 2027-02-01\n  \
castellan check demo erin@example.com --provider corp --claim department=eng --amr pwd --amr mfa\n\n\
Prints ALLOWED or DENIED and every binding that applies, whether it names the person and what its\n\
condition said: Google's policy troubleshooter. Exit status 0 when allowed, 1 when denied.")]
pub struct CheckArgs {
    app: String,
    /// The person's email (their castellan groups are looked up; add provider groups with --group).
    email: String,
    /// A group the provider would assert for them (repeatable).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    #[arg(long, default_value = "/")]
    path: String,
    #[arg(long, default_value = "GET")]
    method: String,
    /// The Host the request would carry.
    #[arg(long, default_value = "")]
    host: String,
    /// The client address.
    #[arg(long)]
    ip: Option<std::net::IpAddr>,
    /// When: a date, a timestamp or a duration from now (default: now).
    #[arg(long)]
    at: Option<String>,
    /// The role to check (default: the one the app needs: roles/accessor, or roles/tunnelAccessor
    /// for a TCP app); e.g. roles/admin.
    #[arg(long, value_name = "ROLE")]
    role: Option<String>,
    /// The provider they would sign in with (request.auth.provider).
    #[arg(long, default_value = "local")]
    provider: String,
    /// How they would sign in, an RFC 8176 value such as pwd, otp, mfa, hwk (request.auth.amr;
    /// repeatable).
    #[arg(long = "amr", value_name = "METHOD")]
    amr: Vec<String>,
    /// The provider's authentication context class (request.auth.acr).
    #[arg(long)]
    acr: Option<String>,
    /// A claim the provider would send, NAME=VALUE; VALUE is read as JSON when it is JSON
    /// (3, true, ["a","b"]), else as a string (request.auth.claims.NAME; repeatable).
    #[arg(long = "claim", value_name = "NAME=VALUE")]
    claims: Vec<String>,
    /// The request comes with a verified client certificate (for access levels with
    /// client_certificate = true; request.auth.access_levels).
    #[arg(long)]
    client_certificate: bool,
}

/// Splits `[APP] ARG` by `--global`.
fn resource_and_arg(
    config: &Config,
    args: &[String],
    target: &Target,
) -> Result<(Resource, String)> {
    match (target.global, args) {
        (true, [arg]) => Ok((Resource::Global, arg.clone())),
        (true, [app, _]) => bail!("--global and an app ({app}) were both given: choose one"),
        (false, [app, arg]) => {
            known_app(config, app)?;
            Ok((Resource::App(app.clone()), arg.clone()))
        }
        (false, [_]) => {
            bail!("name the app first (castellan access add APP MEMBER), or use --global")
        }
        _ => bail!("expected APP and one more argument"),
    }
}

fn resource_of(config: &Config, app: Option<&String>, target: &Target) -> Result<Resource> {
    match (target.global, app) {
        (true, None) => Ok(Resource::Global),
        (false, Some(app)) => {
            known_app(config, app)?;
            Ok(Resource::App(app.clone()))
        }
        (true, Some(app)) => bail!("--global and an app ({app}) were both given: choose one"),
        (false, None) => bail!("name the app, or use --global"),
    }
}

/// A `group:` member names a group castellan does not hold (its own or a SCIM-provisioned
/// one): it matches only through a provider's groups claim or a directory. Says so, and whether
/// any are configured, so a typo does not pass for a grant.
async fn warn_unknown_group(
    config: &Config,
    store: &castellan::store::Store,
    name: &str,
) -> Result<()> {
    let own = store.groups().await?.iter().any(|g| g.name == name);
    let (provisioned, _) = store
        .scim_groups(
            castellan::store::ScimFilter::DisplayName(name),
            castellan::store::ScimPage { start: 1, count: 1 },
        )
        .await?;
    if own || provisioned > 0 {
        return Ok(());
    }
    let claims: Vec<&str> = config
        .providers
        .iter()
        .filter(|p| p.groups_claim.is_some())
        .map(|p| p.id.as_str())
        .collect();
    let directories: Vec<&str> = config.directories.iter().map(|d| d.id.as_str()).collect();
    let sources = match (claims.is_empty(), directories.is_empty()) {
        (true, true) => "no provider sends groups (groups_claim) and no [[directories]] are configured, so nobody is in it yet".to_string(),
        _ => format!(
            "it matches people whose groups come from {}",
            claims
                .iter()
                .map(|c| format!("provider {c}'s groups claim"))
                .chain(directories.iter().map(|d| format!("directory {d}")))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    };
    eprintln!(
        "note: castellan has no group named {name} (`castellan groups list`) and no identity provider provisioned one; {sources}. Create it with `castellan groups create {name}` if it is meant to be castellan's."
    );
    Ok(())
}

pub fn known_app(config: &Config, app: &str) -> Result<()> {
    if config.app(app).is_none() {
        let ids: Vec<&str> = config.apps.iter().map(|a| &*a.id).collect();
        bail!(
            "there is no app `{app}` in the configuration; apps: {}",
            ids.join(", ")
        );
    }
    Ok(())
}

/// The role given, or the one `resource` needs (see [`ops::role_for`]).
fn role_for(config: &Config, resource: &Resource, given: Option<&str>) -> Result<Role> {
    ops::role_for(&config.apps, resource, given).map_err(anyhow::Error::msg)
}

pub async fn access(config: &Config, cmd: AccessCommand) -> Result<ExitCode> {
    match cmd {
        AccessCommand::Add {
            args,
            target,
            role,
            condition,
            condition_title,
            expires,
            yes,
        } => {
            let (resource, member) = resource_and_arg(config, &args, &target)?;
            let member = Member::parse(&member)?;
            let role = role_for(config, &resource, role.as_deref())?;
            if member.is_public() && role != Role::Admin && !yes {
                bail!(
                    "allUsers makes {resource} public: anyone on the internet can open it without signing in. Repeat with --yes if that is what you want"
                );
            }
            let expires = expires
                .map(|e| {
                    ops::parse_expires(&e, castellan::clock::now()).map_err(anyhow::Error::msg)
                })
                .transpose()?;
            let condition = ops::condition(
                &config.access_levels,
                condition.as_deref(),
                condition_title.as_deref(),
                expires,
            )
            .map_err(anyhow::Error::msg)?;
            let store = open_store(config).await?;
            let described = condition
                .as_ref()
                .map(|c| format!(" if \"{}\"", c.title))
                .unwrap_or_default();
            let (_, added) = ops::add(
                &store,
                &resource,
                role,
                member.clone(),
                condition,
                &Actor::cli(),
            )
            .await?;
            if added {
                println!("{member} now has {role} on {resource}{described}");
            } else {
                println!("{member} already had {role} on {resource}{described}; nothing changed");
            }
            if let Member::Group(name) = &member {
                warn_unknown_group(config, &store, name).await?;
            }
        }
        AccessCommand::Remove {
            args,
            target,
            role,
            condition_title,
        } => {
            let (resource, member) = resource_and_arg(config, &args, &target)?;
            let member = Member::parse(&member)?;
            // Any role may be removed, one that does not fit the app included (a clean-up).
            let role = match role {
                Some(r) => Role::parse(&r).map_err(anyhow::Error::msg)?,
                None => role_for(config, &resource, None)?,
            };
            let store = open_store(config).await?;
            let (_, n) = ops::remove(
                &store,
                &resource,
                role,
                &member,
                condition_title.as_deref(),
                &Actor::cli(),
            )
            .await?;
            if n == 0 {
                bail!("{member} has no {role} binding on {resource} (see `castellan access list`)");
            }
            println!("{member} no longer has {role} on {resource} ({n} binding(s) changed)");
        }
        AccessCommand::List { app, target, json } => {
            let resource = resource_of(config, app.as_ref(), &target)?;
            let store = open_store(config).await?;
            let policy = store.policy(&resource).await?;
            print_list(&resource, &policy, json);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(resource: &Resource, policy: &Policy, json: bool) {
    let rows: Vec<(String, String, Option<String>)> = policy
        .bindings
        .iter()
        .flat_map(|b| {
            b.members.iter().map(move |m| {
                (
                    m.to_string(),
                    b.role.to_string(),
                    b.condition
                        .as_ref()
                        .map(|c| format!("{} ({})", c.title, c.expression)),
                )
            })
        })
        .collect();
    if json {
        let members: Vec<_> = rows
            .iter()
            .map(|(m, r, c)| serde_json::json!({ "member": m, "role": r, "condition": c }))
            .collect();
        let app = match resource {
            Resource::App(a) => serde_json::Value::String(a.clone()),
            Resource::Global => serde_json::Value::Null,
        };
        println!(
            "{}",
            serde_json::json!({ "app": app, "public": policy.is_public(), "etag": policy.etag, "members": members })
        );
        return;
    }
    if policy.is_public() {
        println!("WARNING: {resource} is PUBLIC: allUsers can open it without signing in");
    }
    if rows.is_empty() {
        println!(
            "nobody has a role on {resource} yet; share it with `castellan access add APP user:EMAIL`"
        );
    }
    for (m, r, c) in rows {
        match c {
            Some(c) => println!("{m}\t{r}\tif {c}"),
            None => println!("{m}\t{r}"),
        }
    }
}

fn read_document(path: &std::path::Path) -> Result<Document> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    match serde_json::from_str(&text) {
        Ok(d) => Ok(d),
        Err(json) => serde_yaml_ng::from_str(&text).map_err(|yaml| {
            anyhow::anyhow!(
                "{} is not a policy document: as JSON: {json}; as YAML: {yaml}",
                path.display()
            )
        }),
    }
}

pub async fn policy(config: &Config, cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Get {
            app,
            target,
            format,
        } => {
            let resource = resource_of(config, app.as_ref(), &target)?;
            let store = open_store(config).await?;
            let policy = store.policy(&resource).await?;
            match format {
                Format::Json => {
                    println!("{}", serde_json::to_string_pretty(&policy.to_document())?)
                }
                Format::Table => print_list(&resource, &policy, false),
            }
        }
        PolicyCommand::Set {
            args,
            target,
            force,
            yes,
        } => {
            let (resource, file) = resource_and_arg(config, &args, &target)?;
            let doc = read_document(std::path::Path::new(&file))?;
            let policy = Policy::from_document(&doc)?;
            ops::fits(config, &resource, &policy).map_err(anyhow::Error::msg)?;
            if policy.is_public() && !yes {
                bail!(
                    "this document makes {resource} public (allUsers): repeat with --yes if that is what you want"
                );
            }
            if doc.etag.is_empty() && !force {
                bail!(
                    "the document has no etag: start from `castellan policy get` so concurrent changes are not lost, or use --force"
                );
            }
            let store = open_store(config).await?;
            let expected = (!force).then_some(doc.etag.as_str());
            let stored = store
                .set_policy(&resource, &policy, expected, &Actor::cli(), "policy.set")
                .await?;
            println!(
                "set the policy of {resource}: {} binding(s), new etag {}",
                stored.bindings.len(),
                stored.etag
            );
        }
        PolicyCommand::ImportGcloud {
            app,
            file,
            partial,
            yes,
        } => {
            known_app(config, &app)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let target = config.app(&app).context("the app was just checked")?;
            let import = castellan::admin::gcloud::import(&text, target, &config.access_levels)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{}:", file.display());
            for entry in &import.report {
                println!("  {entry}");
            }
            let refused = import.refused();
            if refused > 0 && !partial {
                bail!(
                    "nothing imported: {refused} part(s) of {} cannot be brought over (refused above); change them in the file, or repeat with --partial to import the rest",
                    file.display()
                );
            }
            let policy = import.policy;
            if policy.is_public() && !yes {
                bail!(
                    "the imported policy makes app {app} public (allUsers): repeat with --yes if that is what you want"
                );
            }
            let store = open_store(config).await?;
            let resource = Resource::App(app.clone());
            let stored = store
                .set_policy(
                    &resource,
                    &policy,
                    None,
                    &Actor::cli(),
                    "policy.import-gcloud",
                )
                .await?;
            println!(
                "imported {} binding(s) into app {app} (etag {}){}",
                stored.bindings.len(),
                stored.etag,
                if refused > 0 {
                    format!("; {refused} part(s) refused and left out (--partial)")
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn check(config: &Config, args: CheckArgs) -> Result<ExitCode> {
    known_app(config, &args.app)?;
    let email = crate::users::normalize_email(&args.email)?;
    let role = role_for(
        config,
        &Resource::App(args.app.clone()),
        args.role.as_deref(),
    )?;
    let at = match &args.at {
        None => castellan::clock::now(),
        Some(a) => parse_rfc3339(a)
            .map(Ok)
            .unwrap_or_else(|| ops::parse_expires(a, castellan::clock::now()))
            .map_err(anyhow::Error::msg)?,
    };
    let path = castellan::gate::path::normalize(&args.path)
        .map_err(|e| anyhow::anyhow!("--path {}: {e}", args.path))?;
    let store = open_store(config).await?;
    let snapshot = Snapshot::with_admins(
        store.policies().await?,
        store.memberships().await?,
        &config.admins,
    );
    let mut person = castellan::policy::Identity::local(&email);
    person.provider = args.provider.clone();
    person.groups = args.groups.clone();
    person.amr = args.amr.clone();
    person.acr = args.acr.clone();
    for c in &args.claims {
        let (name, value) = c.split_once('=').with_context(|| {
            format!("--claim {c}: write NAME=VALUE, e.g. --claim department=eng")
        })?;
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
        person.claims.insert(name.to_string(), value);
    }
    let levels = castellan::policy::access_level::met(
        &config.access_levels,
        &castellan::policy::access_level::Seen {
            ip: args.ip,
            client_certificate: args.client_certificate,
            time: at,
        },
    );
    let cx = Context {
        path: &path,
        host: &args.host,
        method: &args.method.to_ascii_uppercase(),
        time: at,
        ip: args.ip,
        destination: config
            .apps
            .iter()
            .find(|a| *a.id == *args.app)
            .and_then(castellan::config::App::destination),
        auth: Some(person.auth(snapshot.groups_of(&email))),
        access_levels: &levels,
    };
    // Domains as the email says: people signed in with Google match `domain:` by their
    // Workspace domain (hd), which the command line cannot know.
    let who = Who::User {
        email: &email,
        groups: &args.groups,
        domain: castellan::policy::email_domain(&email),
    };
    let explanation = snapshot.explain(&args.app, role, who, &cx);
    print!("{}", ops::explain_text(&explanation, &args.app, &email));
    let step_up = ops::step_up_text(config.app(&args.app), &person);
    print!("{}", step_up.as_deref().unwrap_or_default());
    for d in store.directory_groups(Some(&email)).await? {
        let groups = if d.groups.is_empty() {
            "no groups".to_string()
        } else {
            d.groups.join(", ")
        };
        println!(
            "{email}'s groups from directory {}: {groups} (as it answered at {}, {} s ago)",
            d.directory,
            castellan::web::pages::when(d.fetched_at),
            castellan::clock::now() - d.fetched_at
        );
    }
    Ok(if explanation.decision.allowed() && step_up.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
