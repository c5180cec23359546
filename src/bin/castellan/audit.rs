//! `castellan audit`: the trail of decisions and changes.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};

use castellan::admin::ops::parse_expires;
use castellan::config::Config;
use castellan::store::{AuditFilter, AuditRecord};

use crate::open_store;

#[derive(Args)]
#[command(after_help = "Examples:\n  castellan audit --app demo --since 1h\n  \
castellan audit --user alice@example.com --decision denied --json\n  castellan audit --follow\n\n\
--since and --until take a duration back from now (90m, 24h, 7d), a date or a timestamp.")]
pub struct AuditArgs {
    #[arg(long)]
    app: Option<String>,
    /// The person (for decisions) or who made the change (e.g. cli:root).
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    until: Option<String>,
    #[arg(long, value_enum)]
    decision: Option<DecisionFilter>,
    /// Only decisions, only changes, or only ended tunnels (with their duration and bytes).
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Keep printing new records as they arrive (Ctrl-C to stop).
    #[arg(long)]
    follow: bool,
    /// At most this many records (the newest).
    #[arg(long, default_value = "100")]
    limit: i64,
}

#[derive(Clone, Copy, ValueEnum)]
enum DecisionFilter {
    Allowed,
    Denied,
    SignIn,
}

#[derive(Clone, Copy, ValueEnum)]
enum Kind {
    Decision,
    Change,
    Tunnel,
}

/// A point in time given as a duration back from now, a date or a timestamp; Unix milliseconds.
fn point(s: &str) -> Result<i64> {
    let now = castellan::clock::now();
    if let Some(d) = castellan::config::parse_duration(s) {
        return Ok((now - d.as_secs() as i64) * 1000);
    }
    Ok(parse_expires(s, now).map_err(anyhow::Error::msg)? * 1000)
}

pub async fn run(config: &Config, args: AuditArgs) -> Result<ExitCode> {
    let mut filter = AuditFilter {
        app: args.app.clone(),
        actor: args.user.as_ref().map(|u| {
            if u.contains('@') && !u.contains(':') {
                u.to_ascii_lowercase()
            } else {
                u.clone()
            }
        }),
        since_ms: args.since.as_deref().map(point).transpose()?,
        until_ms: args.until.as_deref().map(point).transpose()?,
        decision: args.decision.map(|d| {
            match d {
                DecisionFilter::Allowed => "allow",
                DecisionFilter::Denied => "deny",
                DecisionFilter::SignIn => "sign-in",
            }
            .to_string()
        }),
        kind: args.kind.map(|k| match k {
            Kind::Decision => "decision".to_string(),
            Kind::Change => "change".to_string(),
            Kind::Tunnel => "tunnel".to_string(),
        }),
        after_id: None,
        limit: args.limit,
    };
    let store = open_store(config).await?;
    loop {
        let records = store.audit(&filter).await?;
        for r in &records {
            if args.json {
                println!("{}", serde_json::to_string(r)?);
            } else {
                println!("{}", line(r));
            }
        }
        if !args.follow {
            break;
        }
        if let Some(last) = records.last() {
            filter.after_id = Some(last.id);
        } else if filter.after_id.is_none() {
            filter.after_id = Some(0);
        }
        filter.limit = 10_000;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(ExitCode::SUCCESS)
}

fn line(r: &AuditRecord) -> String {
    let when = castellan::clock::format_rfc3339(r.at / 1000);
    if &*r.kind == "decision" {
        format!(
            "{when}  {:<8} {:<28} {:<10} {} {}  {}{}{}",
            r.action,
            r.actor,
            r.app,
            r.method,
            r.path,
            r.reason,
            if r.binding.is_empty() {
                String::new()
            } else {
                format!("  via {}", r.binding)
            },
            if r.reference.is_empty() {
                String::new()
            } else {
                format!("  ref {}", r.reference)
            },
        )
    } else if &*r.kind == "tunnel" {
        let a = r.after.clone().unwrap_or_default();
        format!(
            "{when}  tunnel   {:<28} {:<10} closed ({}) after {:.1} s: {} bytes up, {} down{}",
            r.actor,
            r.app,
            a["ended"].as_str().unwrap_or("?"),
            a["seconds"].as_f64().unwrap_or(0.0),
            a["bytes_up"],
            a["bytes_down"],
            match a["detail"].as_str() {
                Some(d) if !d.is_empty() => format!(": {d}"),
                _ => String::new(),
            }
        )
    } else {
        let after = r
            .after
            .as_ref()
            .map(|v| format!("  after {v}"))
            .unwrap_or_default();
        format!(
            "{when}  change   {:<28} {} {}{after}",
            r.actor, r.action, r.target
        )
    }
}
