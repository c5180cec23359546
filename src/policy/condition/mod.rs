//! Binding conditions: the part of CEL (Common Expression Language) that Google's IAM Conditions
//! use for IAP resources, compiled and type-checked once, when a policy is stored.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" unary | compare
//! compare := sum (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in") sum)?
//! sum     := postfix (("+" | "-") postfix)*
//! postfix := primary ("." IDENT "(" args ")")*
//! primary := STRING | INT | "-" INT | "true" | "false" | "[" items "]" | "(" expr ")"
//!          | "request.path" | "request.host" | "request.method" | "request.time" | "origin.ip"
//!          | "destination.ip" | "destination.port"
//!          | "timestamp(" STRING ")" | "duration(" STRING ")" | "inIpRange(" expr "," STRING ")"
//! methods := startsWith(s) | endsWith(s) | contains(s) | matches(STRING)        on strings
//!          | getFullYear | getMonth | getDate | getDayOfMonth | getDayOfWeek
//!          | getDayOfYear | getHours | getMinutes | getSeconds | getMilliseconds  on timestamps,
//!            each with an optional time zone (STRING); getHours … getMilliseconds on durations
//! ```
//!
//! Every expression is type-checked at compile time (it must be a bool; operands must agree), so a
//! stored condition cannot fail with a type error later; time zones, patterns, timestamps and
//! durations are resolved then too. Errors carry the column they point at. Evaluation is a walk of
//! a small tree, with CEL's error semantics: what cannot be evaluated (an absent client address,
//! arithmetic out of range) is an error that `&&` and `||` absorb only when the other side decides
//! alone, `!` keeps, and the whole condition turns into "does not apply": it fails closed.

mod eval;
mod lex;
mod parse;
mod time;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::net::IpNet;

pub use self::time::Zone;
use self::time::{Nanos, TimeField};

/// What a condition can see of the request.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub path: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    /// Unix seconds.
    pub time: i64,
    pub ip: Option<IpAddr>,
    /// Where a TCP app's tunnels go (its upstream); `None` for web apps.
    pub destination: Option<Destination<'a>>,
    /// Who is asking (`request.auth.*`); `None` for an anonymous caller of a public app.
    pub auth: Option<Auth<'a>>,
    /// The names of the configured access levels the request meets
    /// (`request.auth.access_levels`).
    pub access_levels: &'a [&'a str],
}

/// The caller as `request.auth` shows it to conditions.
#[derive(Debug, Clone, Copy)]
pub struct Auth<'a> {
    /// The provider's id, `local`, or `serviceAccount`.
    pub provider: &'a str,
    /// The groups the provider or a directory asserted, and the castellan groups they are in.
    pub groups: [&'a [String]; 2],
    /// How they signed in (RFC 8176 `amr` values).
    pub amr: &'a [String],
    /// The provider's authentication context class, if it sent one.
    pub acr: Option<&'a str>,
    /// The ID-token claims the provider's `claims` key keeps.
    pub claims: &'a BTreeMap<String, serde_json::Value>,
}

/// No claims, for callers that have none (service accounts).
pub static NO_CLAIMS: BTreeMap<String, serde_json::Value> = BTreeMap::new();

impl Auth<'static> {
    /// A service account: no provider, groups, sign-in methods or claims.
    pub fn service_account() -> Auth<'static> {
        Auth {
            provider: "serviceAccount",
            groups: [&[], &[]],
            amr: &[],
            acr: None,
            claims: &NO_CLAIMS,
        }
    }
}

/// A TCP app's upstream, as `destination.ip` and `destination.port` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination<'a> {
    /// The host as the app's `upstream` writes it: an address (`10.0.0.5`) or a name.
    pub host: &'a str,
    pub port: u16,
}

/// A compiled condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    root: Node,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for Error {}

impl Error {
    /// The expression with a caret under the error, for terminals.
    pub fn pointed(&self, source: &str) -> String {
        format!(
            "{source}\n{}^ {}",
            " ".repeat(self.column.saturating_sub(1)),
            self.message
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Bool,
    Int,
    String,
    Timestamp,
    Duration,
    Ip,
    StringList,
    IntList,
    /// A claim: whatever JSON the provider sent, or nothing. Compared with strings, ints and bools
    /// when a request is decided; an absent claim makes the comparison false.
    Dyn,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Bool => "bool",
            Type::Int => "int",
            Type::String => "string",
            Type::Timestamp => "timestamp",
            Type::Duration => "duration",
            Type::Ip => "IP address",
            Type::StringList => "list of strings",
            Type::IntList => "list of ints",
            Type::Dyn => "claim",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    Path,
    Host,
    Method,
    Time,
    Ip,
    DestinationIp,
    DestinationPort,
    AuthProvider,
    AuthAcr,
    /// A list of strings the request carries (`request.auth.groups`, `request.auth.amr`).
    AuthGroups,
    AuthAmr,
    /// The access levels the request meets (`request.auth.access_levels`).
    AccessLevels,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arith {
    Add,
    Sub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrMethod {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Bool(bool),
    Int(i64),
    Str(String),
    Timestamp(Nanos),
    Duration(Nanos),
    Strings(Vec<String>),
    Ints(Vec<i64>),
    Attr(Attr),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Compare(Cmp, Box<Node>, Box<Node>),
    InStrings(Box<Node>, Vec<String>),
    InInts(Box<Node>, Vec<i64>),
    Arith(Arith, Box<Node>, Box<Node>),
    Method(StrMethod, Box<Node>, Box<Node>),
    Matches(Box<Node>, Pattern),
    InIpRange(Box<Node>, IpNet),
    /// A calendar field of a timestamp in a time zone.
    TimeField(TimeField, Box<Node>, Zone),
    /// A duration's whole length in a unit (nanoseconds per unit).
    DurationIn(Nanos, Box<Node>),
    /// `request.auth.claims.NAME`.
    Claim(String),
    /// `has(request.auth.claims.NAME)`.
    HasClaim(String),
    /// `x in request.auth.groups` / `request.auth.amr` (an attribute that is a list).
    InAttr(Box<Node>, Attr),
    /// `x in request.auth.claims.NAME` (a claim that is a list).
    InClaim(Box<Node>, String),
}

/// A `matches()` pattern, compiled once. Two are equal when their sources are.
#[derive(Debug, Clone)]
struct Pattern(regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

impl Condition {
    pub fn compile(source: &str) -> Result<Condition, Error> {
        parse::compile(source).map(|root| Condition { root })
    }

    /// Evaluates the condition: true only when it evaluates to true. An error anywhere that the
    /// logic does not absorb (CEL's rules) makes it false: conditions fail closed.
    pub fn eval(&self, cx: &Context<'_>) -> bool {
        eval::holds(&self.root, cx)
    }

    /// The access levels the condition names: the strings it looks for in
    /// `request.auth.access_levels`.
    pub fn access_levels_named(&self) -> Vec<&str> {
        fn walk<'a>(n: &'a Node, out: &mut Vec<&'a str>) {
            match n {
                Node::InAttr(what, Attr::AccessLevels) => {
                    if let Node::Str(s) = what.as_ref() {
                        out.push(s);
                    }
                }
                Node::Not(a)
                | Node::InStrings(a, _)
                | Node::InInts(a, _)
                | Node::Matches(a, _)
                | Node::InIpRange(a, _)
                | Node::TimeField(_, a, _)
                | Node::DurationIn(_, a)
                | Node::InAttr(a, _)
                | Node::InClaim(a, _) => walk(a, out),
                Node::And(a, b)
                | Node::Or(a, b)
                | Node::Compare(_, a, b)
                | Node::Arith(_, a, b)
                | Node::Method(_, a, b) => {
                    walk(a, out);
                    walk(b, out);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// Whether the condition reads `destination.ip` or `destination.port`, which only TCP apps have.
    pub fn reads_destination(&self) -> bool {
        fn walk(n: &Node) -> bool {
            match n {
                Node::Attr(Attr::DestinationIp | Attr::DestinationPort) => true,
                Node::Not(a)
                | Node::InAttr(a, _)
                | Node::InClaim(a, _)
                | Node::InStrings(a, _)
                | Node::InInts(a, _)
                | Node::Matches(a, _)
                | Node::InIpRange(a, _)
                | Node::TimeField(_, a, _)
                | Node::DurationIn(_, a) => walk(a),
                Node::And(a, b)
                | Node::Or(a, b)
                | Node::Compare(_, a, b)
                | Node::Arith(_, a, b)
                | Node::Method(_, a, b) => walk(a) || walk(b),
                _ => false,
            }
        }
        walk(&self.root)
    }

    /// The latest `request.time < timestamp(T)` bound among the top-level `&&` terms, if any: the
    /// moment (Unix seconds) this condition stops granting access by the clock alone.
    pub fn expiry(&self) -> Option<i64> {
        fn walk(n: &Node) -> Option<i64> {
            match n {
                Node::And(a, b) => match (walk(a), walk(b)) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                },
                Node::Compare(Cmp::Lt | Cmp::Le, a, b) if **a == Node::Attr(Attr::Time) => {
                    match **b {
                        Node::Timestamp(t) => {
                            i64::try_from(t.div_euclid(time::NANOS_PER_SECOND)).ok()
                        }
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        walk(&self.root)
    }
}
