//! `castellan policy import-gcloud`: an IAP policy as `gcloud iap web get-iam-policy` prints it
//! (JSON or YAML), brought over binding by binding, with a report of what came over as is, what was
//! translated, and what was refused and why.

use std::fmt;

use crate::config::{App, AppKind};
use crate::policy::access_level::AccessLevel;
use crate::policy::condition::Condition;
use crate::policy::{Document, DocumentBinding, Member, Policy, Role};

/// What happened to one part of the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Imported unchanged.
    AsIs,
    /// Imported under castellan's name for the same thing (the role's alias, say).
    Translated(String),
    /// Left out, for the reason given.
    Refused(String),
}

/// One line of the report: which binding (and member), and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub place: String,
    pub what: String,
    pub verdict: Verdict,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::AsIs => write!(f, "as is       {} {}", self.place, self.what),
            Verdict::Translated(how) => {
                write!(f, "translated  {} {} ({how})", self.place, self.what)
            }
            Verdict::Refused(why) => write!(f, "refused     {} {}: {why}", self.place, self.what),
        }
    }
}

/// The policy made of everything that could be imported, and the report.
#[derive(Debug)]
pub struct Import {
    pub policy: Policy,
    pub report: Vec<Entry>,
}

impl Import {
    /// How many parts were refused.
    pub fn refused(&self) -> usize {
        self.report
            .iter()
            .filter(|e| matches!(e.verdict, Verdict::Refused(_)))
            .count()
    }
}

/// Reads gcloud's output for `app`, binding by binding.
pub fn import(text: &str, app: &App, levels: &[AccessLevel]) -> Result<Import, String> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(json_err) => serde_yaml_ng::from_str(text)
            .map_err(|yaml_err| format!("not JSON ({json_err}) nor YAML ({yaml_err})"))?,
    };
    let bindings = value
        .get("bindings")
        .and_then(|b| b.as_array())
        .cloned()
        .unwrap_or_default();
    let mut report = Vec::new();
    let mut kept = Vec::new();
    for (i, b) in bindings.iter().enumerate() {
        let place = format!("bindings[{i}]");
        let given = b.get("role").and_then(|r| r.as_str()).unwrap_or("");
        let members: Vec<&str> = b
            .get("members")
            .and_then(|m| m.as_array())
            .map(|m| m.iter().filter_map(|x| x.as_str()).collect())
            .unwrap_or_default();
        let refuse = |why: String| Entry {
            place: place.clone(),
            what: format!("{given} ({})", members.join(", ")),
            verdict: Verdict::Refused(why),
        };
        let Ok(role) = Role::parse(given) else {
            report.push(refuse(
                "castellan has no such role (it grants roles/accessor, roles/tunnelAccessor and roles/admin)"
                    .into(),
            ));
            continue;
        };
        if role != Role::Admin && role != app.role() {
            let kind = match app.kind() {
                AppKind::Tcp => "a TCP app, opened with roles/tunnelAccessor",
                AppKind::Web => "a web app, opened with roles/accessor",
            };
            report.push(refuse(format!(
                "it would grant nothing on {}, {kind}: import this policy into an app of the other kind",
                app.id
            )));
            continue;
        }
        let condition = match b.get("condition") {
            None => None,
            Some(c) => {
                let expression = c.get("expression").and_then(|e| e.as_str()).unwrap_or("");
                match Condition::compile(expression) {
                    Err(e) => {
                        report.push(refuse(format!(
                            "its condition is refused (column {}):\n              {}",
                            e.column,
                            e.pointed(expression).replace('\n', "\n              ")
                        )));
                        continue;
                    }
                    Ok(c) if c.reads_destination() && app.kind() == AppKind::Web => {
                        report.push(refuse(format!(
                            "its condition reads destination.ip/port, which only TCP apps have, and {} is a web app",
                            app.id
                        )));
                        continue;
                    }
                    Ok(c)
                        if c.access_levels_named()
                            .iter()
                            .any(|n| !levels.iter().any(|l| l.name == *n)) =>
                    {
                        let missing = c
                            .access_levels_named()
                            .into_iter()
                            .find(|n| !levels.iter().any(|l| l.name == *n))
                            .unwrap_or_default();
                        report.push(refuse(format!(
                            "its condition needs access level `{missing}`, which this castellan does not define: add an [[access_levels]] entry with name = \"{missing}\" (its IP ranges, device certificate or hours) to the configuration, then import again"
                        )));
                        continue;
                    }
                    Ok(_) => Some(
                        serde_json::from_value(c.clone())
                            .map_err(|e| format!("{place}.condition: {e}"))?,
                    ),
                }
            }
        };
        let mut imported = Vec::new();
        for (j, m) in members.iter().enumerate() {
            match Member::parse(m) {
                Ok(_) => imported.push(m.to_string()),
                Err(e) => report.push(Entry {
                    place: format!("{place}.members[{j}]"),
                    what: m.to_string(),
                    verdict: Verdict::Refused(member_refusal(m, &e.to_string())),
                }),
            }
        }
        if imported.is_empty() {
            report.push(refuse("none of its members can be imported (above)".into()));
            continue;
        }
        let what = format!(
            "{}: {}{}",
            role,
            imported.join(", "),
            match &condition {
                Some(c) => format!(" if \"{}\"", condition_title(c)),
                None => String::new(),
            }
        );
        report.push(Entry {
            place: place.clone(),
            what,
            verdict: if given == role.as_str() {
                Verdict::AsIs
            } else {
                Verdict::Translated(format!("{given} is {role} in castellan"))
            },
        });
        kept.push(DocumentBinding {
            role: role.as_str().to_string(),
            members: imported,
            condition,
        });
    }
    let policy = Policy::from_document(&Document {
        version: 3,
        etag: String::new(),
        bindings: kept,
    })
    .map_err(|e| e.to_string())?;
    Ok(Import { policy, report })
}

fn condition_title(c: &crate::policy::DocumentCondition) -> &str {
    if c.title.is_empty() {
        &c.expression
    } else {
        &c.title
    }
}

/// Why a member gcloud printed cannot be imported, in Google's terms where they apply.
fn member_refusal(member: &str, parse_error: &str) -> String {
    if member.starts_with("deleted:") {
        "a deleted Google account or group has no one to grant to".into()
    } else if member.starts_with("principal:") || member.starts_with("principalSet:") {
        "workforce and workload identity federation identities have no castellan equivalent".into()
    } else {
        parse_error.to_string()
    }
}

#[cfg(test)]
mod tests;
