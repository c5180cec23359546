//! Binding conditions: a small, safe subset of CEL, compiled once when a policy is stored.
//!
//! ```text
//! expr    := or
//! or      := and ("||" and)*
//! and     := unary ("&&" unary)*
//! unary   := "!" unary | compare
//! compare := postfix (("==" | "!=" | "<" | "<=" | ">" | ">=" | "in") postfix)?
//! postfix := primary ("." IDENT "(" args ")")*
//! primary := STRING | INT | "true" | "false" | "[" args "]" | "(" expr ")"
//!          | "request.path" | "request.host" | "request.method" | "request.time" | "origin.ip"
//!          | "timestamp(" STRING ")" | "inIpRange(" expr "," STRING ")"
//! methods := startsWith(s) | endsWith(s) | contains(s) | matches(STRING)   on strings
//! ```
//!
//! Every expression is type-checked at compile time (it must be a bool; operands must agree), so a
//! stored condition cannot fail with a type error later. Errors carry the column they point at.
//! There are no loops and no user-defined functions: evaluation is a walk of a small tree. The one
//! regular expression a `matches()` can hold is RE2 syntax (Google's, as IAM Conditions use), compiled
//! when the policy is stored by the `regex` crate, whose matching takes time linear in the input.

use std::fmt;
use std::net::IpAddr;

use crate::clock::parse_rfc3339;
use crate::net::IpNet;

/// What a condition can see of the request.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub path: &'a str,
    pub host: &'a str,
    pub method: &'a str,
    /// Unix seconds.
    pub time: i64,
    pub ip: Option<IpAddr>,
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
    Ip,
    StringList,
}

impl Type {
    fn name(self) -> &'static str {
        match self {
            Type::Bool => "bool",
            Type::Int => "int",
            Type::String => "string",
            Type::Timestamp => "timestamp",
            Type::Ip => "IP address",
            Type::StringList => "list of strings",
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
    Timestamp(i64),
    List(Vec<String>),
    Attr(Attr),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Compare(Cmp, Box<Node>, Box<Node>),
    In(Box<Node>, Vec<String>),
    Method(StrMethod, Box<Node>, Box<Node>),
    Matches(Box<Node>, Pattern),
    InIpRange(Box<Node>, IpNet),
}

/// A `matches()` pattern, compiled once. Two are equal when their sources are.
#[derive(Debug, Clone)]
struct Pattern(regex::Regex);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// The longest `matches()` pattern, and the most memory its compiled form may take.
const PATTERN_MAX_LEN: usize = 1024;
const PATTERN_MAX_SIZE: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Bool(bool),
    Int(i64),
    Str(std::borrow::Cow<'a, str>),
    Ip(Option<IpAddr>),
}

impl Condition {
    pub fn compile(source: &str) -> Result<Condition, Error> {
        let tokens = lex(source)?;
        let mut p = Parser {
            tokens,
            pos: 0,
            end: source.chars().count() + 1,
            depth: 0,
        };
        let (root, ty) = p.expr()?;
        if let Some(t) = p.peek() {
            return Err(Error {
                column: t.column,
                message: format!(
                    "unexpected {} after the end of the expression",
                    t.kind.describe()
                ),
            });
        }
        if ty != Type::Bool {
            return Err(Error {
                column: 1,
                message: format!(
                    "a condition must be true or false, but this is a {}",
                    ty.name()
                ),
            });
        }
        Ok(Condition { root })
    }

    /// Evaluates the condition. Anything unexpected (an absent client address) makes the part of the
    /// expression that needs it false: conditions fail closed.
    pub fn eval(&self, cx: &Context<'_>) -> bool {
        matches!(eval(&self.root, cx), Value::Bool(true))
    }

    /// The latest `request.time < timestamp(T)` bound among the top-level `&&` terms, if any: the
    /// moment this condition stops granting access by the clock alone.
    pub fn expiry(&self) -> Option<i64> {
        fn walk(n: &Node) -> Option<i64> {
            match n {
                Node::And(a, b) => match (walk(a), walk(b)) {
                    (Some(x), Some(y)) => Some(x.min(y)),
                    (x, y) => x.or(y),
                },
                Node::Compare(Cmp::Lt | Cmp::Le, a, b) if **a == Node::Attr(Attr::Time) => {
                    match **b {
                        Node::Timestamp(t) => Some(t),
                        _ => None,
                    }
                }
                _ => None,
            }
        }
        walk(&self.root)
    }
}

fn eval<'a>(n: &'a Node, cx: &Context<'a>) -> Value<'a> {
    use std::borrow::Cow;
    match n {
        Node::Bool(b) => Value::Bool(*b),
        Node::Int(i) | Node::Timestamp(i) => Value::Int(*i),
        Node::Str(s) => Value::Str(Cow::Borrowed(s)),
        Node::List(_) => Value::Bool(false),
        Node::Attr(Attr::Path) => Value::Str(Cow::Borrowed(cx.path)),
        Node::Attr(Attr::Host) => Value::Str(Cow::Borrowed(cx.host)),
        Node::Attr(Attr::Method) => Value::Str(Cow::Borrowed(cx.method)),
        Node::Attr(Attr::Time) => Value::Int(cx.time),
        Node::Attr(Attr::Ip) => Value::Ip(cx.ip),
        Node::Not(a) => Value::Bool(!truthy(eval(a, cx))),
        Node::And(a, b) => Value::Bool(truthy(eval(a, cx)) && truthy(eval(b, cx))),
        Node::Or(a, b) => Value::Bool(truthy(eval(a, cx)) || truthy(eval(b, cx))),
        Node::Compare(op, a, b) => {
            let (a, b) = (eval(a, cx), eval(b, cx));
            let ord = match (&a, &b) {
                (Value::Int(x), Value::Int(y)) => x.cmp(y),
                (Value::Str(x), Value::Str(y)) => x.cmp(y),
                (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
                _ => return Value::Bool(false),
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
        Node::In(a, list) => match eval(a, cx) {
            Value::Str(s) => Value::Bool(list.iter().any(|x| *x == *s)),
            _ => Value::Bool(false),
        },
        Node::Method(m, recv, arg) => match (eval(recv, cx), eval(arg, cx)) {
            (Value::Str(s), Value::Str(a)) => Value::Bool(match m {
                StrMethod::StartsWith => s.starts_with(&*a),
                StrMethod::EndsWith => s.ends_with(&*a),
                StrMethod::Contains => s.contains(&*a),
            }),
            _ => Value::Bool(false),
        },
        // CEL's matches(): true when the pattern matches anywhere in the string (anchor it with ^
        // and $ to match all of it), as Google's implementation does.
        Node::Matches(recv, Pattern(re)) => match eval(recv, cx) {
            Value::Str(s) => Value::Bool(re.is_match(&s)),
            _ => Value::Bool(false),
        },
        Node::InIpRange(a, net) => match eval(a, cx) {
            Value::Ip(Some(ip)) => Value::Bool(net.contains(ip)),
            _ => Value::Bool(false),
        },
    }
}

fn truthy(v: Value<'_>) -> bool {
    matches!(v, Value::Bool(true))
}

// ---- lexer ----------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Op(&'static str),
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::Int(i) => format!("{i}"),
            Tok::Op(o) => format!("`{o}`"),
        }
    }
}

#[derive(Debug, Clone)]
struct Token {
    kind: Tok,
    column: usize,
}

fn lex(src: &str) -> Result<Vec<Token>, Error> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    if chars.len() > 4096 {
        return Err(Error {
            column: 1,
            message: "the expression is longer than 4096 characters".into(),
        });
    }
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        // CEL's raw strings, r"…" or r'…': backslashes stay as they are (regular expressions).
        if matches!(c, 'r' | 'R') && matches!(chars.get(i + 1), Some('"' | '\'')) {
            let quote = chars[i + 1];
            let start = i + 2;
            let Some(len) = chars[start..].iter().position(|&ch| ch == quote) else {
                return Err(Error {
                    column,
                    message: "this string is not closed".into(),
                });
            };
            out.push(Token {
                kind: Tok::Str(chars[start..start + len].iter().collect()),
                column,
            });
            i = start + len + 1;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                kind: Tok::Ident(chars[start..i].iter().collect()),
                column,
            });
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = text.parse().map_err(|_| Error {
                column,
                message: "this number is too large".into(),
            })?;
            out.push(Token {
                kind: Tok::Int(n),
                column,
            });
            continue;
        }
        if c == '"' || c == '\'' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&ch) = chars.get(i) else {
                    return Err(Error {
                        column,
                        message: "this string is not closed".into(),
                    });
                };
                i += 1;
                match ch {
                    '\\' => {
                        let esc = chars.get(i).copied();
                        i += 1;
                        match esc {
                            Some('\\') => s.push('\\'),
                            Some('"') => s.push('"'),
                            Some('\'') => s.push('\''),
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            _ => {
                                return Err(Error {
                                    column: i - 1,
                                    message: "unknown escape: use \\\\, \\\", \\', \\n or \\t"
                                        .into(),
                                });
                            }
                        }
                    }
                    ch if ch == quote => break,
                    ch => s.push(ch),
                }
            }
            out.push(Token {
                kind: Tok::Str(s),
                column,
            });
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let op = ["&&", "||", "==", "!=", "<=", ">="]
            .into_iter()
            .find(|o| *o == two)
            .or_else(|| {
                ["!", "<", ">", "(", ")", "[", "]", ",", "."]
                    .into_iter()
                    .find(|o| o.starts_with(c))
            });
        match op {
            Some(o) => {
                i += o.len();
                out.push(Token {
                    kind: Tok::Op(o),
                    column,
                });
            }
            None => {
                return Err(Error {
                    column,
                    message: format!("unexpected character `{c}`"),
                });
            }
        }
    }
    Ok(out)
}

// ---- parser ---------------------------------------------------------------------------------------

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
    /// How deeply the parser has recursed (parentheses, lists, `!`).
    depth: usize,
}

/// Nesting beyond this is refused: the parser and evaluator recurse, and a policy must not be
/// able to exhaust a thread's stack (found by the `condition` fuzz target).
const MAX_NESTING: usize = 64;

type Typed = (Node, Type);

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn column(&self) -> usize {
        self.peek().map(|t| t.column).unwrap_or(self.end)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Token { kind: Tok::Op(o), .. }) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect_op(&mut self, op: &str) -> Result<(), Error> {
        if self.eat_op(op) {
            return Ok(());
        }
        Err(Error {
            column: self.column(),
            message: match self.peek() {
                Some(t) => format!("expected `{op}`, found {}", t.kind.describe()),
                None => format!("expected `{op}`, but the expression ends"),
            },
        })
    }

    fn err<T>(&self, column: usize, message: impl Into<String>) -> Result<T, Error> {
        Err(Error {
            column,
            message: message.into(),
        })
    }

    fn expect_type(&self, column: usize, got: Type, want: Type, what: &str) -> Result<(), Error> {
        if got == want {
            Ok(())
        } else {
            self.err(
                column,
                format!(
                    "{what} needs a {}, but this is a {}",
                    want.name(),
                    got.name()
                ),
            )
        }
    }

    fn nest(&mut self, column: usize) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.err(
                column,
                format!("the expression nests more than {MAX_NESTING} levels deep"),
            );
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Typed, Error> {
        let col = self.column();
        self.nest(col)?;
        let result = self.expr_inner(col);
        self.depth -= 1;
        result
    }

    fn expr_inner(&mut self, col: usize) -> Result<Typed, Error> {
        let (mut left, ty) = self.and()?;
        while self.eat_op("||") {
            self.expect_type(col, ty, Type::Bool, "`||`")?;
            let c = self.column();
            let (right, rty) = self.and()?;
            self.expect_type(c, rty, Type::Bool, "`||`")?;
            left = Node::Or(Box::new(left), Box::new(right));
        }
        let ty = if matches!(left, Node::Or(..)) {
            Type::Bool
        } else {
            ty
        };
        Ok((left, ty))
    }

    fn and(&mut self) -> Result<Typed, Error> {
        let col = self.column();
        let (mut left, ty) = self.unary()?;
        while self.eat_op("&&") {
            self.expect_type(col, ty, Type::Bool, "`&&`")?;
            let c = self.column();
            let (right, rty) = self.unary()?;
            self.expect_type(c, rty, Type::Bool, "`&&`")?;
            left = Node::And(Box::new(left), Box::new(right));
        }
        let ty = if matches!(left, Node::And(..)) {
            Type::Bool
        } else {
            ty
        };
        Ok((left, ty))
    }

    fn unary(&mut self) -> Result<Typed, Error> {
        let col = self.column();
        if self.eat_op("!") {
            self.nest(col)?;
            let inner = self.unary();
            self.depth -= 1;
            let (inner, ty) = inner?;
            self.expect_type(col + 1, ty, Type::Bool, "`!`")?;
            return Ok((Node::Not(Box::new(inner)), Type::Bool));
        }
        self.compare()
    }

    fn compare(&mut self) -> Result<Typed, Error> {
        let col = self.column();
        let (left, lty) = self.postfix()?;
        let op = match self.peek() {
            Some(Token {
                kind: Tok::Op(o), ..
            }) => match *o {
                "==" => Some(Cmp::Eq),
                "!=" => Some(Cmp::Ne),
                "<" => Some(Cmp::Lt),
                "<=" => Some(Cmp::Le),
                ">" => Some(Cmp::Gt),
                ">=" => Some(Cmp::Ge),
                _ => None,
            },
            Some(Token {
                kind: Tok::Ident(i),
                ..
            }) if i == "in" => {
                self.pos += 1;
                let c = self.column();
                let (right, rty) = self.postfix()?;
                let Node::List(items) = right else {
                    return self.err(c, "`in` needs a list of strings, e.g. [\"GET\", \"HEAD\"]");
                };
                self.expect_type(c, rty, Type::StringList, "`in`")?;
                self.expect_type(col, lty, Type::String, "`in`")?;
                return Ok((Node::In(Box::new(left), items), Type::Bool));
            }
            _ => None,
        };
        let Some(op) = op else {
            return Ok((left, lty));
        };
        self.pos += 1;
        let c = self.column();
        let (right, rty) = self.postfix()?;
        if lty != rty {
            return self.err(
                c,
                format!("cannot compare a {} with a {}", lty.name(), rty.name()),
            );
        }
        if matches!(lty, Type::Ip | Type::StringList) {
            return self.err(
                col,
                format!(
                    "a {} cannot be compared; use inIpRange for addresses",
                    lty.name()
                ),
            );
        }
        if lty == Type::Bool && !matches!(op, Cmp::Eq | Cmp::Ne) {
            return self.err(col, "true and false can only be compared with == and !=");
        }
        Ok((
            Node::Compare(op, Box::new(left), Box::new(right)),
            Type::Bool,
        ))
    }

    fn postfix(&mut self) -> Result<Typed, Error> {
        let (mut node, mut ty) = self.primary()?;
        while self.eat_op(".") {
            let col = self.column();
            let name = match self.peek() {
                Some(Token {
                    kind: Tok::Ident(n),
                    ..
                }) => n.clone(),
                _ => return self.err(col, "expected a method name after `.`"),
            };
            self.pos += 1;
            let method = match name.as_str() {
                "startsWith" => StrMethod::StartsWith,
                "endsWith" => StrMethod::EndsWith,
                "contains" => StrMethod::Contains,
                "matches" => {
                    self.expect_type(col, ty, Type::String, "`matches`")?;
                    self.expect_op("(")?;
                    let (pattern, c) = self.string_literal("matches()")?;
                    self.expect_op(")")?;
                    node = Node::Matches(Box::new(node), self.pattern(&pattern, c)?);
                    ty = Type::Bool;
                    continue;
                }
                _ => {
                    return self.err(
                        col,
                        format!(
                            "unknown method `{name}`: use startsWith, endsWith, contains or matches"
                        ),
                    );
                }
            };
            self.expect_type(col, ty, Type::String, &format!("`{name}`"))?;
            self.expect_op("(")?;
            let c = self.column();
            let (arg, aty) = self.expr()?;
            self.expect_type(c, aty, Type::String, &format!("`{name}`"))?;
            self.expect_op(")")?;
            node = Node::Method(method, Box::new(node), Box::new(arg));
            ty = Type::Bool;
        }
        Ok((node, ty))
    }

    /// Compiles a `matches()` pattern (RE2 syntax), refusing one too long or too large to run in
    /// bounded time and memory.
    fn pattern(&self, source: &str, column: usize) -> Result<Pattern, Error> {
        if source.len() > PATTERN_MAX_LEN {
            return self.err(
                column,
                format!("a matches() pattern is at most {PATTERN_MAX_LEN} characters"),
            );
        }
        regex::RegexBuilder::new(source)
            .size_limit(PATTERN_MAX_SIZE)
            .build()
            .map(Pattern)
            .or_else(|e| {
                let why = match e {
                    regex::Error::CompiledTooBig(_) => "it is too large to run safely".to_string(),
                    e => e.to_string().lines().last().unwrap_or("").trim().to_string(),
                };
                self.err(
                    column,
                    format!("`{source}` is not a regular expression castellan can run (RE2 syntax; no look-around or back-references): {why}"),
                )
            })
    }

    fn string_literal(&mut self, what: &str) -> Result<(String, usize), Error> {
        let col = self.column();
        match self.peek() {
            Some(Token {
                kind: Tok::Str(s), ..
            }) => {
                let s = s.clone();
                self.pos += 1;
                Ok((s, col))
            }
            _ => self.err(col, format!("{what} takes a string literal here")),
        }
    }

    fn primary(&mut self) -> Result<Typed, Error> {
        let col = self.column();
        let Some(tok) = self.peek().cloned() else {
            return self.err(col, "the expression ends too early");
        };
        self.pos += 1;
        match tok.kind {
            Tok::Str(s) => Ok((Node::Str(s), Type::String)),
            Tok::Int(i) => Ok((Node::Int(i), Type::Int)),
            Tok::Op("(") => {
                let inner = self.expr()?;
                self.expect_op(")")?;
                Ok(inner)
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                if !self.eat_op("]") {
                    loop {
                        let (s, _) = self.string_literal("a list")?;
                        items.push(s);
                        if self.eat_op("]") {
                            break;
                        }
                        self.expect_op(",")?;
                    }
                }
                Ok((Node::List(items), Type::StringList))
            }
            Tok::Ident(name) => match name.as_str() {
                "true" => Ok((Node::Bool(true), Type::Bool)),
                "false" => Ok((Node::Bool(false), Type::Bool)),
                "request" | "origin" => {
                    self.expect_op(".")?;
                    let c = self.column();
                    let field = match self.peek() {
                        Some(Token { kind: Tok::Ident(f), .. }) => f.clone(),
                        _ => return self.err(c, format!("expected a field of `{name}`")),
                    };
                    self.pos += 1;
                    match (name.as_str(), field.as_str()) {
                        ("request", "path") => Ok((Node::Attr(Attr::Path), Type::String)),
                        ("request", "host") => Ok((Node::Attr(Attr::Host), Type::String)),
                        ("request", "method") => Ok((Node::Attr(Attr::Method), Type::String)),
                        ("request", "time") => Ok((Node::Attr(Attr::Time), Type::Timestamp)),
                        ("origin", "ip") => Ok((Node::Attr(Attr::Ip), Type::Ip)),
                        ("request", "auth") => self.err(
                            c,
                            "request.auth (Access Context Manager's access levels) does not exist in castellan: \
                             for a network condition use inIpRange(origin.ip, \"10.0.0.0/8\"); a level named in it \
                             cannot be checked here, so the binding is refused rather than let through",
                        ),
                        _ => self.err(
                            c,
                            format!("unknown attribute `{name}.{field}`: use request.path, request.host, request.method, request.time or origin.ip"),
                        ),
                    }
                }
                "timestamp" => {
                    self.expect_op("(")?;
                    let (s, c) = self.string_literal("timestamp()")?;
                    self.expect_op(")")?;
                    match parse_rfc3339(&s) {
                        Some(t) => Ok((Node::Timestamp(t), Type::Timestamp)),
                        None => self.err(c, format!("`{s}` is not a timestamp: write e.g. \"2027-01-01T00:00:00Z\"")),
                    }
                }
                "inIpRange" => {
                    self.expect_op("(")?;
                    let c = self.column();
                    let (ip, ty) = self.expr()?;
                    self.expect_type(c, ty, Type::Ip, "inIpRange")?;
                    self.expect_op(",")?;
                    let (s, c) = self.string_literal("inIpRange()")?;
                    self.expect_op(")")?;
                    match IpNet::parse(&s) {
                        Some(net) => Ok((Node::InIpRange(Box::new(ip), net), Type::Bool)),
                        None => self.err(c, format!("`{s}` is not a network: write e.g. \"10.0.0.0/8\"")),
                    }
                }
                _ => self.err(
                    col,
                    format!("unknown name `{name}`: use request.path, request.host, request.method, request.time, origin.ip, timestamp() or inIpRange()"),
                ),
            },
            other => self.err(col, format!("unexpected {}", other.describe())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx<'a>(path: &'a str, method: &'a str, ip: &str, time: i64) -> Context<'a> {
        Context {
            path,
            host: "apps.example.com",
            method,
            time,
            ip: ip.parse().ok(),
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!("1 > {}1{}", "(".repeat(2000), ")".repeat(2000));
        let e = Condition::compile(&deep).unwrap_err();
        assert!(e.message.contains("nests more than 64"), "{e}");
        let nots = format!("{}true", "!".repeat(3000));
        assert!(Condition::compile(&nots).is_err());
        let ok = format!("{}true{}", "(".repeat(60), ")".repeat(60));
        assert!(Condition::compile(&ok).is_ok());
    }

    #[test]
    fn evaluation_table() {
        let t2026 = parse_rfc3339("2026-06-01T00:00:00Z").unwrap();
        let t2028 = parse_rfc3339("2028-06-01T00:00:00Z").unwrap();
        let cases: &[(&str, &str, &str, &str, i64, bool)] = &[
            (
                "request.path.startsWith(\"/reports\")",
                "/reports/q",
                "GET",
                "10.0.0.1",
                t2026,
                true,
            ),
            (
                "request.path.startsWith(\"/reports\")",
                "/admin",
                "GET",
                "10.0.0.1",
                t2026,
                false,
            ),
            (
                "request.path.endsWith('.csv')",
                "/a.csv",
                "GET",
                "10.0.0.1",
                t2026,
                true,
            ),
            (
                "request.path.contains(\"/q/\")",
                "/a/q/b",
                "GET",
                "10.0.0.1",
                t2026,
                true,
            ),
            (
                "request.host == \"apps.example.com\"",
                "/",
                "GET",
                "10.0.0.1",
                t2026,
                true,
            ),
            (
                "request.host != \"apps.example.com\"",
                "/",
                "GET",
                "10.0.0.1",
                t2026,
                false,
            ),
            (
                "request.method in [\"GET\", \"HEAD\"]",
                "/",
                "HEAD",
                "10.0.0.1",
                t2026,
                true,
            ),
            (
                "request.method in [\"GET\", \"HEAD\"]",
                "/",
                "POST",
                "10.0.0.1",
                t2026,
                false,
            ),
            (
                "request.time < timestamp(\"2027-01-01T00:00:00Z\")",
                "/",
                "GET",
                "10.0.0.1",
                t2026,
                true,
            ),
            (
                "request.time < timestamp(\"2027-01-01T00:00:00Z\")",
                "/",
                "GET",
                "10.0.0.1",
                t2028,
                false,
            ),
            (
                "inIpRange(origin.ip, \"10.0.0.0/8\")",
                "/",
                "GET",
                "10.9.9.9",
                t2026,
                true,
            ),
            (
                "inIpRange(origin.ip, \"10.0.0.0/8\")",
                "/",
                "GET",
                "192.0.2.1",
                t2026,
                false,
            ),
            (
                "inIpRange(origin.ip, \"10.0.0.0/8\")",
                "/",
                "GET",
                "none",
                t2026,
                false,
            ),
            (
                "!inIpRange(origin.ip, \"10.0.0.0/8\")",
                "/",
                "GET",
                "192.0.2.1",
                t2026,
                true,
            ),
            (
                "(request.path.startsWith(\"/a\") || request.path.startsWith(\"/b\")) && request.method == \"GET\"",
                "/b/x",
                "GET",
                "10.0.0.1",
                t2026,
                true,
            ),
            (
                "request.path.startsWith(\"/a\") || request.path.startsWith(\"/b\") && false",
                "/a",
                "GET",
                "1.1.1.1",
                t2026,
                true,
            ),
            ("true && !false", "/", "GET", "1.1.1.1", t2026, true),
            ("1 < 2", "/", "GET", "1.1.1.1", t2026, true),
        ];
        for (src, path, method, ip, time, want) in cases {
            let c = Condition::compile(src).unwrap_or_else(|e| panic!("{src}: {}", e.pointed(src)));
            assert_eq!(
                c.eval(&cx(path, method, ip, *time)),
                *want,
                "{src} on {path} {method} {ip}"
            );
        }
    }

    #[test]
    fn matches_searches_with_re2_syntax_unless_anchored() {
        let at = |src: &str, path: &str| {
            Condition::compile(src)
                .unwrap_or_else(|e| panic!("{src}: {e}"))
                .eval(&cx(path, "GET", "10.0.0.1", 0))
        };
        // The issue's example, and Google's documented form with a raw string.
        let reports = "request.path.matches(\"^/reports/[0-9]+$\")";
        assert!(at(reports, "/reports/12"));
        assert!(!at(reports, "/reports/12/x"));
        assert!(!at(reports, "/reports/"));
        assert!(at(
            r#"request.path.matches(r"^/reports/\d+$")"#,
            "/reports/7"
        ));
        assert!(at(
            r#"request.path.matches("^/reports/\\d+$")"#,
            "/reports/7"
        ));
        // Unanchored, as CEL's matches(): a match anywhere counts.
        assert!(at("request.path.matches(\"csv\")", "/export/a.csv"));
        assert!(!at("request.path.matches(\"^csv\")", "/export/a.csv"));
        // RE2's Unicode classes and case-insensitive flag.
        assert!(at(r#"request.path.matches(r"^/\p{L}+$")"#, "/Zürich"));
        assert!(at(r#"request.host.matches(r"(?i)^APPS\.")"#, "/"));
        assert!(!at("!request.path.matches(\"csv\")", "/a.csv"));
    }

    #[test]
    fn compile_errors_point_at_the_problem() {
        let cases: &[(&str, usize, &str)] = &[
            ("request.path.startsWith(\"/a\"", 29, "expected `)`"),
            ("request.pth == \"/\"", 9, "unknown attribute `request.pth`"),
            ("request.path", 1, "must be true or false"),
            (
                "request.path == 1",
                17,
                "cannot compare a string with a int",
            ),
            ("request.time < \"2027\"", 16, "cannot compare"),
            ("timestamp(\"tomorrow\")", 11, "not a timestamp"),
            ("inIpRange(origin.ip, \"10.0.0.0/99\")", 22, "not a network"),
            (
                "request.path.matches(\"(\")",
                22,
                "not a regular expression",
            ),
            (
                "request.path.matches(r\"(a)\\1\")",
                22,
                "no look-around or back-references",
            ),
            (
                "request.path.matches(request.host)",
                22,
                "takes a string literal",
            ),
            ("request.time.matches(\"x\")", 14, "string"),
            (
                "request.path.matches(\"(a{1000}){1000}\")",
                22,
                "too large to run safely",
            ),
            (
                "\"accessPolicies/1/accessLevels/corp\" in request.auth.access_levels",
                49,
                "request.auth",
            ),
            (
                "request.path.matchez(\"x\")",
                14,
                "unknown method `matchez`",
            ),
            ("request.path == \"/\" &&", 23, "ends too early"),
            (
                "request.path == \"/\" ; true",
                21,
                "unexpected character `;`",
            ),
            ("request.path == \"/", 17, "not closed"),
            ("foo()", 1, "unknown name `foo`"),
            ("request.method in \"GET\"", 19, "needs a list"),
            ("origin.ip == origin.ip", 1, "cannot be compared"),
            ("true true", 6, "unexpected `true`"),
        ];
        for (src, column, needle) in cases {
            let e = Condition::compile(src).expect_err(src);
            assert!(e.message.contains(needle), "{src}: {e}");
            assert_eq!(e.column, *column, "{src}: {e}");
        }
        let e = Condition::compile("request.pth == \"/\"").unwrap_err();
        assert_eq!(
            e.pointed("request.pth == \"/\""),
            "request.pth == \"/\"\n        ^ unknown attribute `request.pth`: use request.path, request.host, request.method, request.time or origin.ip"
        );
    }

    #[test]
    fn expiry_is_found_in_top_level_conjunctions() {
        let t = parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
        let c = Condition::compile(
            "request.path.startsWith(\"/r\") && request.time < timestamp(\"2027-01-01T00:00:00Z\")",
        )
        .unwrap();
        assert_eq!(c.expiry(), Some(t));
        assert_eq!(
            Condition::compile("request.method == \"GET\"")
                .unwrap()
                .expiry(),
            None
        );
    }
}
