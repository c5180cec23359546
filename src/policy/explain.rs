//! The policy troubleshooter: every binding that could apply to a request, and what each said
//! about the caller, beside the decision itself (`castellan check`, `POST /api/v1/check`).

use super::condition::Context;
use super::snapshot::{Decision, Grant, Resource, Snapshot, Who};
use super::{Member, Role};

impl Snapshot {
    /// Every binding of `app`'s and the global policy for `role`, and what it said about `who`:
    /// the policy troubleshooter.
    pub fn explain(&self, app: &str, role: Role, who: Who<'_>, cx: &Context<'_>) -> Explanation {
        let mut lines = Vec::new();
        let groups: Vec<String> = match who {
            Who::User { email, groups, .. } => self
                .groups_of(email)
                .iter()
                .chain(groups)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        for c in self.policies(app) {
            for (i, b) in c
                .policy
                .bindings
                .iter()
                .enumerate()
                .filter(|(_, b)| b.role == role)
            {
                let matched: Vec<String> = b
                    .members
                    .iter()
                    .filter(|m| member_names(m, who, &groups))
                    .map(Member::to_string)
                    .collect();
                lines.push(ExplainedBinding {
                    resource: c.resource.clone(),
                    index: i,
                    members: b.members.iter().map(Member::to_string).collect(),
                    matched,
                    condition: b
                        .condition
                        .as_ref()
                        .map(|c| (c.title.clone(), c.expression.clone(), c.compiled.eval(cx))),
                });
            }
        }
        Explanation {
            role,
            decision: self.decide_role(app, role, who, cx),
            bindings: lines,
            groups,
            hidden: 0,
        }
    }
}

fn member_names(m: &Member, who: Who<'_>, groups: &[String]) -> bool {
    match (m, who) {
        (Member::AllUsers, _) => true,
        (Member::AllAuthenticatedUsers, Who::User { .. } | Who::ServiceAccount(_)) => true,
        (Member::User(e), Who::User { email, .. }) => e == email,
        (Member::Domain(d), Who::User { domain, .. }) => domain == Some(d.as_str()),
        (Member::Group(g), Who::User { .. }) => groups.contains(g),
        (Member::ServiceAccount(s), Who::ServiceAccount(n)) => s == n,
        _ => false,
    }
}

/// The troubleshooter's answer.
#[derive(Debug)]
pub struct Explanation {
    /// The role asked about.
    pub role: Role,
    pub decision: Decision,
    pub bindings: Vec<ExplainedBinding>,
    /// The groups the caller was considered a member of.
    pub groups: Vec<String>,
    /// How many bindings were left out by [`Explanation::for_app_admin`].
    pub hidden: usize,
}

impl Explanation {
    /// What an administrator of one app may read: that app's bindings, and of the person's groups
    /// only those the app's bindings name. Bindings of the global policy are counted, not shown,
    /// and a decision they made names no binding.
    pub fn for_app_admin(mut self) -> Explanation {
        let before = self.bindings.len();
        self.bindings.retain(|b| b.resource != Resource::Global);
        self.hidden = before - self.bindings.len();
        let named: Vec<String> = self
            .bindings
            .iter()
            .flat_map(|b| b.members.iter())
            .filter_map(|m| m.strip_prefix("group:").map(str::to_string))
            .collect();
        self.groups.retain(|g| named.contains(g));
        if let Decision::Allow(g) = &self.decision
            && g.label().starts_with("global#")
        {
            self.decision = Decision::Allow(Grant::of_global_policy(g.reason()));
        }
        self
    }
}

#[derive(Debug)]
pub struct ExplainedBinding {
    pub resource: Resource,
    pub index: usize,
    pub members: Vec<String>,
    /// The members of this binding that name the caller.
    pub matched: Vec<String>,
    /// (title, expression, result) when the binding has a condition.
    pub condition: Option<(String, String, bool)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Document, Policy, Reason};

    fn policy(json: &str) -> Policy {
        Policy::from_document(&serde_json::from_str::<Document>(json).unwrap()).unwrap()
    }

    fn cx(path: &str) -> Context<'_> {
        Context {
            path,
            host: "apps.example.com",
            method: "GET",
            time: 1_800_000_000,
            ip: "10.1.2.3".parse().ok(),
            destination: None,
            auth: None,
            access_levels: &[],
        }
    }

    fn user<'a>(email: &'a str, groups: &'a [String]) -> Who<'a> {
        Who::User {
            email,
            groups,
            domain: crate::policy::email_domain(email),
        }
    }

    #[test]
    fn explanations_say_which_bindings_named_the_caller() {
        let p = policy(
            r#"{"bindings":[{"role":"roles/accessor","members":["user:alice@example.com","domain:example.com"],
                "condition":{"title":"reports","expression":"request.path.startsWith(\"/reports\")"}}]}"#,
        );
        let s = Snapshot::new(vec![(Resource::App("demo".into()), p)], vec![]);
        let e = s.explain(
            "demo",
            Role::Accessor,
            user("alice@example.com", &[]),
            &cx("/admin"),
        );
        assert_eq!(e.decision, Decision::Deny(Reason::ConditionNotMet));
        assert_eq!(
            e.bindings[0].matched,
            vec!["user:alice@example.com", "domain:example.com"]
        );
        assert!(!e.bindings[0].condition.as_ref().unwrap().2);
    }

    #[test]
    fn an_app_admin_sees_only_the_apps_bindings_and_groups() {
        let app =
            policy(r#"{"bindings":[{"role":"roles/accessor","members":["group:analysts"]}]}"#);
        let global = policy(
            r#"{"bindings":[{"role":"roles/accessor","members":["group:secret-board","user:ceo@example.com"]}]}"#,
        );
        let s = Snapshot::new(
            vec![
                (Resource::App("demo".into()), app),
                (Resource::Global, global),
            ],
            vec![
                ("analysts".into(), "ceo@example.com".into()),
                ("secret-board".into(), "ceo@example.com".into()),
            ],
        );
        let full = s.explain(
            "demo",
            Role::Accessor,
            user("ceo@example.com", &[]),
            &cx("/"),
        );
        assert_eq!(full.bindings.len(), 2);
        let seen = full.for_app_admin();
        assert_eq!(seen.hidden, 1);
        assert!(seen.bindings.iter().all(|b| b.resource != Resource::Global));
        assert_eq!(seen.groups, vec!["analysts"]);
        // Granted by the global policy (a user binding beats the group one there? no: the app's
        // own binding is looked at first and grants): the label is the app's.
        let Decision::Allow(g) = &seen.decision else {
            panic!()
        };
        assert!(g.to_string().starts_with("app:demo#0"), "{g}");
        let only_global = s.explain(
            "other",
            Role::Accessor,
            user("ceo@example.com", &[]),
            &cx("/"),
        );
        let Decision::Allow(g) = only_global.for_app_admin().decision else {
            panic!()
        };
        assert_eq!(g.to_string(), "a binding of the global policy");
    }
}
