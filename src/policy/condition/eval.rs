//! Evaluation: a walk of the compiled tree. Types were checked when the condition was compiled, so
//! the only errors left are missing data (no client address, `destination` on a web app) and
//! arithmetic out of range; they follow CEL's rules (see [`Value::Error`]).

use std::borrow::Cow;
use std::net::IpAddr;

use super::time::{self, NANOS_PER_SECOND, Nanos};
use super::{Arith, Attr, Cmp, Context, Node, Pattern, StrMethod};

#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Bool(bool),
    Int(i64),
    Str(Cow<'a, str>),
    Timestamp(Nanos),
    Duration(Nanos),
    Ip(IpAddr),
    /// A claim that is a list or an object (only `in` looks inside a list).
    Json(&'a serde_json::Value),
    /// A claim (or `acr`) the provider did not send: comparisons with it are false, not errors.
    Absent,
    /// Something could not be evaluated. `false && error` is false and `true || error` is true,
    /// whatever the order; everything else with an error is an error, and a condition that ends
    /// in one does not hold.
    Error,
}

pub(super) fn holds(root: &Node, cx: &Context<'_>) -> bool {
    matches!(eval(root, cx), Value::Bool(true))
}

fn eval<'a>(n: &'a Node, cx: &Context<'a>) -> Value<'a> {
    match n {
        Node::Bool(b) => Value::Bool(*b),
        Node::Int(i) => Value::Int(*i),
        Node::Str(s) => Value::Str(Cow::Borrowed(s)),
        Node::Timestamp(t) => Value::Timestamp(*t),
        Node::Duration(d) => Value::Duration(*d),
        // Lists only appear on the right of `in` (the type checker sees to it).
        Node::Strings(_) | Node::Ints(_) => Value::Error,
        Node::Attr(a) => attr(*a, cx),
        Node::Not(a) => match eval(a, cx) {
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Error,
        },
        Node::And(a, b) => match eval(a, cx) {
            Value::Bool(false) => Value::Bool(false),
            left => match (left, eval(b, cx)) {
                (_, Value::Bool(false)) => Value::Bool(false),
                (Value::Bool(true), Value::Bool(true)) => Value::Bool(true),
                _ => Value::Error,
            },
        },
        Node::Or(a, b) => match eval(a, cx) {
            Value::Bool(true) => Value::Bool(true),
            left => match (left, eval(b, cx)) {
                (_, Value::Bool(true)) => Value::Bool(true),
                (Value::Bool(false), Value::Bool(false)) => Value::Bool(false),
                _ => Value::Error,
            },
        },
        Node::Compare(op, a, b) => compare(*op, eval(a, cx), eval(b, cx)),
        Node::InStrings(a, list) => match eval(a, cx) {
            Value::Str(s) => Value::Bool(list.iter().any(|x| *x == *s)),
            Value::Absent => Value::Bool(false),
            _ => Value::Error,
        },
        Node::InInts(a, list) => match eval(a, cx) {
            Value::Int(i) => Value::Bool(list.contains(&i)),
            Value::Absent => Value::Bool(false),
            _ => Value::Error,
        },
        Node::Claim(name) => match &cx.auth {
            Some(auth) => auth.claims.get(name).map_or(Value::Absent, claim),
            None => Value::Error,
        },
        Node::HasClaim(name) => match &cx.auth {
            Some(auth) => Value::Bool(auth.claims.contains_key(name)),
            None => Value::Error,
        },
        // The request's access levels: there for anonymous callers too.
        Node::InAttr(a, Attr::AccessLevels) => match eval(a, cx) {
            Value::Str(s) => Value::Bool(cx.access_levels.contains(&s.as_ref())),
            Value::Absent => Value::Bool(false),
            _ => Value::Error,
        },
        Node::InAttr(a, list) => match (eval(a, cx), &cx.auth) {
            (Value::Str(s), Some(auth)) => Value::Bool(match list {
                Attr::AuthGroups => auth.groups.iter().any(|g| g.iter().any(|x| *x == *s)),
                _ => auth.amr.iter().any(|x| *x == *s),
            }),
            (Value::Absent, Some(_)) => Value::Bool(false),
            _ => Value::Error,
        },
        Node::InClaim(a, name) => {
            let Some(auth) = &cx.auth else {
                return Value::Error;
            };
            match (eval(a, cx), auth.claims.get(name)) {
                (Value::Absent, _) | (_, None) => Value::Bool(false),
                (Value::Error, _) => Value::Error,
                (x, Some(serde_json::Value::Array(items))) => Value::Bool(
                    items
                        .iter()
                        .any(|i| compare(Cmp::Eq, x.clone(), claim(i)) == Value::Bool(true)),
                ),
                _ => Value::Error,
            }
        }
        Node::Arith(op, a, b) => arith(*op, eval(a, cx), eval(b, cx)),
        Node::Method(m, recv, arg) => match (eval(recv, cx), eval(arg, cx)) {
            (Value::Str(s), Value::Str(a)) => Value::Bool(match m {
                StrMethod::StartsWith => s.starts_with(&*a),
                StrMethod::EndsWith => s.ends_with(&*a),
                StrMethod::Contains => s.contains(&*a),
            }),
            (Value::Absent, _) | (_, Value::Absent) => Value::Bool(false),
            _ => Value::Error,
        },
        // CEL's matches(): true when the pattern matches anywhere in the string (anchor it with ^
        // and $ to match all of it), as Google's implementation does.
        Node::Matches(recv, Pattern(re)) => match eval(recv, cx) {
            Value::Str(s) => Value::Bool(re.is_match(&s)),
            Value::Absent => Value::Bool(false),
            _ => Value::Error,
        },
        Node::InIpRange(a, net) => match eval(a, cx) {
            Value::Ip(ip) => Value::Bool(net.contains(ip)),
            _ => Value::Error,
        },
        Node::TimeField(field, recv, zone) => match eval(recv, cx) {
            Value::Timestamp(t) => zone.field(*field, t).map_or(Value::Error, Value::Int),
            _ => Value::Error,
        },
        Node::DurationIn(unit, recv) => match eval(recv, cx) {
            // Truncated toward zero, as CEL's duration.getHours() and friends.
            Value::Duration(d) => i64::try_from(d / unit).map_or(Value::Error, Value::Int),
            _ => Value::Error,
        },
    }
}

fn attr<'a>(a: Attr, cx: &Context<'a>) -> Value<'a> {
    match a {
        Attr::Path => Value::Str(Cow::Borrowed(cx.path)),
        Attr::Host => Value::Str(Cow::Borrowed(cx.host)),
        Attr::Method => Value::Str(Cow::Borrowed(cx.method)),
        Attr::Time => Value::Timestamp(Nanos::from(cx.time) * NANOS_PER_SECOND),
        Attr::Ip => cx.ip.map_or(Value::Error, Value::Ip),
        Attr::DestinationIp => cx
            .destination
            .map_or(Value::Error, |d| Value::Str(Cow::Borrowed(d.host))),
        Attr::DestinationPort => cx
            .destination
            .map_or(Value::Error, |d| Value::Int(i64::from(d.port))),
        Attr::AuthProvider => cx
            .auth
            .map_or(Value::Error, |a| Value::Str(Cow::Borrowed(a.provider))),
        Attr::AuthAcr => match cx.auth {
            Some(a) => a
                .acr
                .map_or(Value::Absent, |acr| Value::Str(Cow::Borrowed(acr))),
            None => Value::Error,
        },
        // Lists only appear on the right of `in` (the type checker sees to it).
        Attr::AuthGroups | Attr::AuthAmr | Attr::AccessLevels => Value::Error,
    }
}

/// A claim's JSON as a value conditions compare: strings, whole numbers and bools as such.
fn claim(v: &serde_json::Value) -> Value<'_> {
    match v {
        serde_json::Value::String(s) => Value::Str(Cow::Borrowed(s)),
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => n.as_i64().map_or(Value::Json(v), Value::Int),
        other => Value::Json(other),
    }
}

fn compare(op: Cmp, a: Value<'_>, b: Value<'_>) -> Value<'static> {
    if a == Value::Absent || b == Value::Absent {
        return Value::Bool(false);
    }
    let ord = match (&a, &b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Str(x), Value::Str(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Timestamp(x), Value::Timestamp(y)) | (Value::Duration(x), Value::Duration(y)) => {
            x.cmp(y)
        }
        _ => return Value::Error,
    };
    Value::Bool(match op {
        Cmp::Eq => ord.is_eq(),
        Cmp::Ne => ord.is_ne(),
        Cmp::Lt => ord.is_lt(),
        Cmp::Le => ord.is_le(),
        Cmp::Gt => ord.is_gt(),
        Cmp::Ge => ord.is_ge(),
    })
}

/// `+` and `-` on ints, strings (`+` only), timestamps and durations, as CEL defines them; a result
/// out of range is an error.
fn arith<'a>(op: Arith, a: Value<'a>, b: Value<'a>) -> Value<'a> {
    let checked = |x: Nanos, y: Nanos| match op {
        Arith::Add => x.checked_add(y),
        Arith::Sub => x.checked_sub(y),
    };
    match (a, b) {
        (Value::Int(x), Value::Int(y)) => match op {
            Arith::Add => x.checked_add(y),
            Arith::Sub => x.checked_sub(y),
        }
        .map_or(Value::Error, Value::Int),
        (Value::Str(x), Value::Str(y)) if op == Arith::Add => {
            Value::Str(Cow::Owned(x.into_owned() + &y))
        }
        (Value::Timestamp(t), Value::Duration(d)) => checked(t, d)
            .and_then(time::timestamp_in_range)
            .map_or(Value::Error, Value::Timestamp),
        (Value::Duration(d), Value::Timestamp(t)) if op == Arith::Add => t
            .checked_add(d)
            .and_then(time::timestamp_in_range)
            .map_or(Value::Error, Value::Timestamp),
        (Value::Timestamp(x), Value::Timestamp(y)) if op == Arith::Sub => x
            .checked_sub(y)
            .and_then(time::duration_in_range)
            .map_or(Value::Error, Value::Duration),
        (Value::Duration(x), Value::Duration(y)) => checked(x, y)
            .and_then(time::duration_in_range)
            .map_or(Value::Error, Value::Duration),
        _ => Value::Error,
    }
}

/// Folds `+`/`-` of two literals at compile time (so `timestamp(…) + duration(…)` is a timestamp
/// the expiry finder can read); `None` when either side is not a literal or the result is an
/// error, which the caller reports.
pub(super) fn fold(op: Arith, a: &Node, b: &Node) -> Option<Result<Node, ()>> {
    let literal = |n: &Node| -> Option<Value<'static>> {
        Some(match n {
            Node::Int(i) => Value::Int(*i),
            Node::Timestamp(t) => Value::Timestamp(*t),
            Node::Duration(d) => Value::Duration(*d),
            _ => return None,
        })
    };
    let (x, y) = (literal(a)?, literal(b)?);
    Some(match arith(op, x, y) {
        Value::Int(i) => Ok(Node::Int(i)),
        Value::Timestamp(t) => Ok(Node::Timestamp(t)),
        Value::Duration(d) => Ok(Node::Duration(d)),
        _ => Err(()),
    })
}
