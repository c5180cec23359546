//! Compiled policies: an immutable snapshot of every app's policy, the global policy and castellan's
//! groups, indexed by member so a decision looks only at the bindings that can name the caller.
//!
//! The server swaps a new snapshot in atomically whenever the store changes; a decision never waits
//! on the store.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::condition::Context;
use super::{Member, Policy, Role};

/// The hash map `crate::crypto::FastMap` is (the policy core uses only the clock and networks):
/// every request looks its principal and app up here.
type FastMap<K, V> = HashMap<K, V, foldhash::quality::RandomState>;

/// Which policy a binding belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Global,
    App(String),
}

impl Resource {
    /// `global` or `app:ID`: the store's key and the audit trail's spelling.
    pub fn key(&self) -> String {
        match self {
            Resource::Global => "global".into(),
            Resource::App(id) => format!("app:{id}"),
        }
    }

    pub fn from_key(key: &str) -> Option<Resource> {
        match key {
            "global" => Some(Resource::Global),
            _ => key
                .strip_prefix("app:")
                .map(|id| Resource::App(id.to_string())),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Global => f.write_str("the global policy"),
            Resource::App(id) => write!(f, "app {id}"),
        }
    }
}

/// The caller, as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub enum Who<'a> {
    Anonymous,
    /// A person: lower-case email, the groups their provider asserted, and the domain `domain:`
    /// members match (see [`super::Identity::policy_domain`]).
    User {
        email: &'a str,
        groups: &'a [String],
        domain: Option<&'a str>,
    },
    ServiceAccount(&'a str),
}

/// The binding that let a request through, as the audit trail names it, and why it matched.
/// Made when the policy is compiled, so an allowed request only clones it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `app:demo#0 user:alice@example.com`, plus ` if "TITLE"` for a conditional binding.
    label: Arc<str>,
    reason: Reason,
}

impl Grant {
    fn new(resource: &Resource, binding: usize, member: &Member, condition: Option<&str>) -> Grant {
        let mut label = format!("{}#{binding} {member}", resource.key());
        if let Some(title) = condition {
            label.push_str(&format!(" if \"{title}\""));
        }
        let reason = match member {
            Member::User(_) => Reason::User,
            Member::Group(_) => Reason::Group,
            Member::Domain(_) => Reason::Domain,
            Member::ServiceAccount(_) => Reason::ServiceAccount,
            Member::AllAuthenticatedUsers => Reason::AllAuthenticatedUsers,
            Member::AllUsers => Reason::AllUsers,
        };
        Grant {
            label: label.into(),
            reason,
        }
    }
}

impl Grant {
    /// A grant named only as a binding of the global policy (what an app's admin may see).
    pub(super) fn of_global_policy(reason: Reason) -> Grant {
        Grant {
            label: Arc::from("a binding of the global policy"),
            reason,
        }
    }

    /// `app:demo#0 user:alice@example.com` (see [`Grant`]): shared, not copied, per request.
    pub fn label(&self) -> &Arc<str> {
        &self.label
    }

    pub fn reason(&self) -> Reason {
        self.reason
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Grant),
    /// Nobody is signed in and the app is not public: sign in first.
    SignIn,
    Deny(Reason),
}

/// Why: stable kebab-case strings for logs, pages and the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    UserUnauthenticated,
    User,
    Group,
    Domain,
    ServiceAccount,
    AllAuthenticatedUsers,
    AllUsers,
    NoMatchingBinding,
    ConditionNotMet,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UserUnauthenticated => "user-unauthenticated",
            Reason::User => "user-ok",
            Reason::Group => "group-ok",
            Reason::Domain => "domain-ok",
            Reason::ServiceAccount => "service-account-ok",
            Reason::AllAuthenticatedUsers => "all-authenticated-users",
            Reason::AllUsers => "all-users",
            Reason::NoMatchingBinding => "no-matching-binding",
            Reason::ConditionNotMet => "condition-not-met",
        }
    }
}

impl Decision {
    pub fn reason(&self) -> Reason {
        match self {
            Decision::Allow(g) => g.reason,
            Decision::Deny(r) => *r,
            Decision::SignIn => Reason::UserUnauthenticated,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Decision::Allow(_) => "allow",
            Decision::SignIn => "sign-in",
            Decision::Deny(_) => "deny",
        }
    }

    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }
}

/// A binding that names a member: its position in the policy and the grant it makes.
#[derive(Debug)]
struct Hit {
    binding: usize,
    grant: Grant,
}

/// Bindings by member kind, in policy order, for one role of one policy.
#[derive(Debug, Default)]
struct Index {
    users: FastMap<String, Vec<Hit>>,
    domains: FastMap<String, Vec<Hit>>,
    groups: FastMap<String, Vec<Hit>>,
    service_accounts: FastMap<String, Vec<Hit>>,
    all_authenticated: Vec<Hit>,
    all_users: Vec<Hit>,
}

#[derive(Debug)]
pub(super) struct Compiled {
    pub(super) resource: Resource,
    pub(super) policy: Policy,
    /// One index per role, at `role as usize`.
    indexes: [Index; 3],
}

impl Compiled {
    fn new(resource: Resource, policy: Policy) -> Compiled {
        let mut indexes: [Index; 3] = Default::default();
        for (i, b) in policy.bindings.iter().enumerate() {
            let idx = &mut indexes[b.role as usize];
            let title = b.condition.as_ref().map(|c| c.title.as_str());
            for m in &b.members {
                let hit = Hit {
                    binding: i,
                    grant: Grant::new(&resource, i, m, title),
                };
                match m {
                    Member::User(e) => idx.users.entry(e.clone()).or_default().push(hit),
                    Member::Domain(d) => idx.domains.entry(d.clone()).or_default().push(hit),
                    Member::Group(g) => idx.groups.entry(g.clone()).or_default().push(hit),
                    Member::ServiceAccount(s) => {
                        idx.service_accounts.entry(s.clone()).or_default().push(hit)
                    }
                    Member::AllAuthenticatedUsers => idx.all_authenticated.push(hit),
                    Member::AllUsers => idx.all_users.push(hit),
                }
            }
        }
        Compiled {
            resource,
            policy,
            indexes,
        }
    }

    fn index(&self, role: Role) -> &Index {
        &self.indexes[role as usize]
    }
}

/// Everything decisions need, immutable once built.
#[derive(Debug, Default)]
pub struct Snapshot {
    global: Option<Compiled>,
    apps: FastMap<String, Compiled>,
    /// castellan's own groups, by member email.
    groups_of: FastMap<String, Vec<String>>,
}

/// Outcome of looking at the candidates of one policy.
enum Look {
    Allowed(Grant),
    ConditionFailed,
    Nothing,
}

impl Snapshot {
    /// Builds a snapshot from policies keyed by resource and group memberships (group, email).
    pub fn new(policies: Vec<(Resource, Policy)>, memberships: Vec<(String, String)>) -> Snapshot {
        let mut s = Snapshot::default();
        for (resource, policy) in policies {
            let c = Compiled::new(resource.clone(), policy);
            match resource {
                Resource::Global => s.global = Some(c),
                Resource::App(id) => {
                    s.apps.insert(id, c);
                }
            }
        }
        for (group, email) in memberships {
            s.groups_of.entry(email).or_default().push(group);
        }
        s
    }

    /// Like [`Snapshot::new`], with `admins` (the configuration's `admins`, never stored) holding
    /// roles/admin on the global policy. The server and `castellan check` both build their
    /// snapshots here, so they agree about who is an administrator.
    pub fn with_admins(
        mut policies: Vec<(Resource, Policy)>,
        memberships: Vec<(String, String)>,
        admins: &[Member],
    ) -> Snapshot {
        if !admins.is_empty() {
            if !policies.iter().any(|(r, _)| *r == Resource::Global) {
                policies.push((Resource::Global, Policy::default()));
            }
            if let Some((_, global)) = policies.iter_mut().find(|(r, _)| *r == Resource::Global) {
                for m in admins {
                    global.add(Role::Admin, m.clone(), None);
                }
            }
        }
        Snapshot::new(policies, memberships)
    }

    pub fn policy(&self, resource: &Resource) -> Option<&Policy> {
        match resource {
            Resource::Global => self.global.as_ref().map(|c| &c.policy),
            Resource::App(id) => self.apps.get(id).map(|c| &c.policy),
        }
    }

    /// castellan's groups that `email` belongs to.
    pub fn groups_of(&self, email: &str) -> &[String] {
        self.groups_of.get(email).map(Vec::as_slice).unwrap_or(&[])
    }

    pub(super) fn policies<'s>(&'s self, app: &str) -> impl Iterator<Item = &'s Compiled> {
        self.apps.get(app).into_iter().chain(self.global.as_ref())
    }

    /// May `who` open `app` with this request? `role` is what the app asks of its callers
    /// ([`crate::config::App::role`]: a web app roles/accessor, a TCP app roles/tunnelAccessor).
    pub fn decide(&self, app: &str, role: Role, who: Who<'_>, cx: &Context<'_>) -> Decision {
        self.decide_role(app, role, who, cx)
    }

    /// Does `who` hold `role` on `app` (directly or through the global policy)? `app` None: global only.
    pub fn has_role(&self, app: Option<&str>, role: Role, who: Who<'_>, cx: &Context<'_>) -> bool {
        match app {
            Some(app) => self.decide_role(app, role, who, cx).allowed(),
            None => matches!(
                self.global.as_ref().map(|c| self.look(c, role, who, cx)),
                Some(Look::Allowed(_))
            ),
        }
    }

    pub(super) fn decide_role(
        &self,
        app: &str,
        role: Role,
        who: Who<'_>,
        cx: &Context<'_>,
    ) -> Decision {
        let mut condition_failed = false;
        for c in self.policies(app) {
            match self.look(c, role, who, cx) {
                Look::Allowed(g) => return Decision::Allow(g),
                Look::ConditionFailed => condition_failed = true,
                Look::Nothing => {}
            }
        }
        match who {
            Who::Anonymous => Decision::SignIn,
            _ if condition_failed => Decision::Deny(Reason::ConditionNotMet),
            _ => Decision::Deny(Reason::NoMatchingBinding),
        }
    }

    /// Checks the bindings of `c` that can name `who`, unconditional ones before conditional ones.
    fn look(&self, c: &Compiled, role: Role, who: Who<'_>, cx: &Context<'_>) -> Look {
        let idx = c.index(role);
        let mut lists: Vec<&[Hit]> = Vec::with_capacity(6);
        fn push<'i>(lists: &mut Vec<&'i [Hit]>, v: Option<&'i Vec<Hit>>) {
            lists.extend(v.map(Vec::as_slice));
        }
        match who {
            Who::Anonymous => {}
            Who::User {
                email,
                groups,
                domain,
            } => {
                push(&mut lists, idx.users.get(email));
                if let Some(domain) = domain {
                    push(&mut lists, idx.domains.get(domain));
                }
                if !idx.groups.is_empty() {
                    for g in self.groups_of(email).iter().chain(groups) {
                        push(&mut lists, idx.groups.get(g));
                    }
                }
                push(&mut lists, Some(&idx.all_authenticated));
            }
            Who::ServiceAccount(name) => {
                push(&mut lists, idx.service_accounts.get(name));
                push(&mut lists, Some(&idx.all_authenticated));
            }
        }
        push(&mut lists, Some(&idx.all_users));

        let mut condition_failed = false;
        for pass_conditional in [false, true] {
            for hit in lists.iter().flat_map(|l| l.iter()) {
                match (&c.policy.bindings[hit.binding].condition, pass_conditional) {
                    (None, false) => return Look::Allowed(hit.grant.clone()),
                    (Some(cond), true) => {
                        if cond.compiled.eval(cx) {
                            return Look::Allowed(hit.grant.clone());
                        }
                        condition_failed = true;
                    }
                    _ => {}
                }
            }
        }
        if condition_failed {
            Look::ConditionFailed
        } else {
            Look::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BindingCondition, Document};

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
    fn decision_table() {
        let app = policy(
            r#"{"bindings":[
                {"role":"roles/accessor","members":["user:alice@example.com"]},
                {"role":"roles/accessor","members":["group:analysts"],"condition":{"title":"reports only","expression":"request.path.startsWith(\"/reports\")"}},
                {"role":"roles/accessor","members":["domain:partner.org"],"condition":{"title":"expired","expression":"request.time < timestamp(\"2020-01-01T00:00:00Z\")"}},
                {"role":"roles/accessor","members":["serviceAccount:ci-bot"]},
                {"role":"roles/admin","members":["user:root@example.com"]}]}"#,
        );
        let global = policy(
            r#"{"bindings":[{"role":"roles/accessor","members":["user:ops@example.com"]}]}"#,
        );
        let s = Snapshot::new(
            vec![
                (Resource::App("demo".into()), app),
                (Resource::Global, global),
            ],
            vec![("analysts".into(), "carol@example.com".into())],
        );
        let none: Vec<String> = vec![];
        let claim = vec!["analysts".to_string()];
        let cases: Vec<(Who, &str, &str, &str)> = vec![
            (Who::Anonymous, "/", "sign-in", "user-unauthenticated"),
            (user("alice@example.com", &none), "/", "allow", "user-ok"),
            (
                user("bob@example.com", &none),
                "/",
                "deny",
                "no-matching-binding",
            ),
            (
                user("carol@example.com", &none),
                "/reports/q",
                "allow",
                "group-ok",
            ),
            (
                user("carol@example.com", &none),
                "/admin",
                "deny",
                "condition-not-met",
            ),
            (
                user("dave@example.com", &claim),
                "/reports",
                "allow",
                "group-ok",
            ),
            (
                user("dave@example.com", &claim),
                "/",
                "deny",
                "condition-not-met",
            ),
            (
                user("eve@partner.org", &none),
                "/",
                "deny",
                "condition-not-met",
            ),
            (
                Who::ServiceAccount("ci-bot"),
                "/",
                "allow",
                "service-account-ok",
            ),
            (
                Who::ServiceAccount("other"),
                "/",
                "deny",
                "no-matching-binding",
            ),
            (user("ops@example.com", &none), "/", "allow", "user-ok"),
            (
                user("root@example.com", &none),
                "/",
                "deny",
                "no-matching-binding",
            ),
        ];
        for (who, path, label, reason) in cases {
            let d = s.decide("demo", Role::Accessor, who, &cx(path));
            assert_eq!(
                (d.label(), d.reason().as_str()),
                (label, reason),
                "{who:?} {path}"
            );
        }
        // The global policy applies to apps that have no policy of their own.
        assert!(
            s.decide(
                "other",
                Role::Accessor,
                user("ops@example.com", &none),
                &cx("/")
            )
            .allowed()
        );
        assert!(
            !s.decide(
                "other",
                Role::Accessor,
                user("alice@example.com", &none),
                &cx("/")
            )
            .allowed()
        );
        // Roles are separate: admin does not open the app, accessor does not manage it.
        assert!(s.has_role(
            Some("demo"),
            Role::Admin,
            user("root@example.com", &none),
            &cx("/")
        ));
        assert!(!s.has_role(
            Some("demo"),
            Role::Admin,
            user("alice@example.com", &none),
            &cx("/")
        ));
        assert!(!s.has_role(None, Role::Admin, user("root@example.com", &none), &cx("/")));
    }

    #[test]
    fn configured_admins_join_the_global_policy() {
        let admin = Member::parse("user:root@example.com").unwrap();
        let s = Snapshot::with_admins(vec![], vec![], &[admin]);
        let root = user("root@example.com", &[]);
        assert!(s.has_role(None, Role::Admin, root, &cx("/")));
        assert!(s.has_role(Some("any"), Role::Admin, root, &cx("/")));
        assert!(
            !s.decide("any", Role::Accessor, root, &cx("/")).allowed(),
            "admin does not open apps"
        );
    }

    #[test]
    fn public_apps_let_anonymous_callers_in() {
        let mut p = Policy::default();
        p.add(Role::Accessor, Member::AllUsers, None);
        let s = Snapshot::new(vec![(Resource::App("pub".into()), p)], vec![]);
        let d = s.decide("pub", Role::Accessor, Who::Anonymous, &cx("/"));
        assert_eq!(d.reason(), Reason::AllUsers);
    }

    #[test]
    fn the_grant_names_binding_member_and_condition() {
        let mut p = Policy::default();
        p.add(
            Role::Accessor,
            Member::parse("user:alice@example.com").unwrap(),
            Some(BindingCondition::new("r", "", "request.path.startsWith(\"/r\")").unwrap()),
        );
        let s = Snapshot::new(vec![(Resource::App("demo".into()), p)], vec![]);
        let Decision::Allow(g) = s.decide(
            "demo",
            Role::Accessor,
            user("alice@example.com", &[]),
            &cx("/r"),
        ) else {
            panic!()
        };
        assert_eq!(g.to_string(), "app:demo#0 user:alice@example.com if \"r\"");
    }
}
