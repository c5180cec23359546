//! The parser and type checker: tokens to a typed tree, or an error that points at a column and
//! says what to write instead.

mod auth;

use super::eval::fold;
use super::lex::{Tok, Token, lex};
use super::time::{self, TimeField, Zone};
use super::{Arith, Attr, Cmp, Error, Node, Pattern, StrMethod, Type};
use crate::net::IpNet;

/// The longest `matches()` pattern, and the most memory its compiled form may take.
const PATTERN_MAX_LEN: usize = 1024;
const PATTERN_MAX_SIZE: usize = 1 << 20;

/// Nesting beyond this is refused: the parser and evaluator recurse, and a policy must not be
/// able to exhaust a thread's stack (found by the `condition` fuzz target). Each operator of a
/// chain (`a && b && c`) counts as a level, since the tree it builds is that deep; IAM itself
/// allows 12 logical operators in a condition.
const MAX_NESTING: usize = 64;

type Typed = (Node, Type);

pub(super) fn compile(source: &str) -> Result<Node, Error> {
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
    Ok(root)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    end: usize,
    /// How deeply the tree being built nests (parentheses, `!`, chained operators).
    depth: usize,
}

const ATTRIBUTES: &str = "request.path, request.host, request.method, request.time, origin.ip, \
                          destination.ip, destination.port or request.auth (provider, groups, amr, acr, claims)";

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn column(&self) -> usize {
        self.peek().map(|t| t.column).unwrap_or(self.end)
    }

    fn peek_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Token { kind: Tok::Op(o), .. }) if *o == op)
    }

    fn eat_op(&mut self, op: &str) -> bool {
        let found = self.peek_op(op);
        if found {
            self.pos += 1;
        }
        found
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
        let result = self.logical("||", col);
        self.depth -= 1;
        result
    }

    /// `a || b || …` (op "||", whose terms are `&&` chains) or `a && b && …` (terms are unary).
    fn logical(&mut self, op: &'static str, col: usize) -> Result<Typed, Error> {
        let term = |p: &mut Parser| {
            if op == "||" {
                let c = p.column();
                p.logical("&&", c)
            } else {
                p.unary()
            }
        };
        let depth = self.depth;
        let (mut left, ty) = term(self)?;
        while self.peek_op(op) {
            let c = self.column();
            self.pos += 1;
            self.nest(c)?;
            self.expect_type(col, ty, Type::Bool, &format!("`{op}`"))?;
            let c = self.column();
            let (right, rty) = term(self)?;
            self.expect_type(c, rty, Type::Bool, &format!("`{op}`"))?;
            left = if op == "||" {
                Node::Or(Box::new(left), Box::new(right))
            } else {
                Node::And(Box::new(left), Box::new(right))
            };
        }
        let chained = self.depth > depth;
        self.depth = depth;
        Ok((left, if chained { Type::Bool } else { ty }))
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
        let (left, lty) = self.sum()?;
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
                let (right, rty) = self.sum()?;
                return match (right, lty) {
                    (Node::Strings(items), Type::String | Type::Dyn) => {
                        Ok((Node::InStrings(Box::new(left), items), Type::Bool))
                    }
                    (Node::Ints(items), Type::Int | Type::Dyn) => {
                        Ok((Node::InInts(Box::new(left), items), Type::Bool))
                    }
                    (
                        Node::Attr(list @ (Attr::AuthGroups | Attr::AuthAmr | Attr::AccessLevels)),
                        Type::String | Type::Dyn,
                    ) => Ok((Node::InAttr(Box::new(left), list), Type::Bool)),
                    (Node::Claim(name), Type::String | Type::Int | Type::Bool | Type::Dyn) => {
                        Ok((Node::InClaim(Box::new(left), name), Type::Bool))
                    }
                    (Node::Attr(Attr::AuthGroups | Attr::AuthAmr | Attr::AccessLevels), _) => self
                        .err(
                            col,
                            format!(
                                "`in` looks for a string in this list, but this is a {}",
                                lty.name()
                            ),
                        ),
                    (Node::Strings(_) | Node::Ints(_), _) => self.err(
                        col,
                        format!(
                            "`in` looks for a {} in a {}, but this is a {}",
                            if rty == Type::IntList {
                                "int"
                            } else {
                                "string"
                            },
                            rty.name(),
                            lty.name()
                        ),
                    ),
                    _ => self.err(
                        c,
                        "`in` needs a list written out, e.g. [\"GET\", \"HEAD\"] or [22, 5432]",
                    ),
                };
            }
            _ => None,
        };
        let Some(op) = op else {
            return Ok((left, lty));
        };
        self.pos += 1;
        let c = self.column();
        let (right, rty) = self.sum()?;
        let scalar = |t: Type| matches!(t, Type::String | Type::Int | Type::Bool | Type::Dyn);
        let with_claim = (lty == Type::Dyn && scalar(rty)) || (rty == Type::Dyn && scalar(lty));
        if lty != rty && !with_claim {
            return self.err(
                c,
                format!("cannot compare a {} with a {}", lty.name(), rty.name()),
            );
        }
        if matches!(lty, Type::Ip | Type::StringList | Type::IntList) {
            return self.err(
                col,
                format!(
                    "a {} cannot be compared; use inIpRange for addresses and `in` for lists",
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

    /// `a + b - c`: ints, strings (`+`), timestamps and durations, typed as CEL types them.
    fn sum(&mut self) -> Result<Typed, Error> {
        let col = self.column();
        let depth = self.depth;
        let (mut left, mut ty) = self.postfix()?;
        loop {
            let op = if self.peek_op("+") {
                Arith::Add
            } else if self.peek_op("-") {
                Arith::Sub
            } else {
                break;
            };
            let opc = self.column();
            self.pos += 1;
            self.nest(opc)?;
            let c = self.column();
            let (right, rty) = self.postfix()?;
            let result = match (op, ty, rty) {
                (_, Type::Int, Type::Int) => Type::Int,
                (Arith::Add, Type::String, Type::String) => Type::String,
                (_, Type::Timestamp, Type::Duration)
                | (Arith::Add, Type::Duration, Type::Timestamp) => Type::Timestamp,
                (Arith::Sub, Type::Timestamp, Type::Timestamp)
                | (_, Type::Duration, Type::Duration) => Type::Duration,
                _ => {
                    return self.err(
                        c,
                        format!(
                            "cannot {} a {} {} a {}",
                            if op == Arith::Add { "add" } else { "subtract" },
                            rty.name(),
                            if op == Arith::Add { "to" } else { "from" },
                            ty.name()
                        ),
                    );
                }
            };
            left = match fold(op, &left, &right) {
                Some(Ok(folded)) => folded,
                Some(Err(())) => return self.err(col, "this arithmetic is out of range"),
                None => Node::Arith(op, Box::new(left), Box::new(right)),
            };
            ty = result;
        }
        self.depth = depth;
        Ok((left, ty))
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
            (node, ty) = self.method(col, &name, node, ty)?;
        }
        Ok((node, ty))
    }

    fn method(&mut self, col: usize, name: &str, recv: Node, ty: Type) -> Result<Typed, Error> {
        let recv = Box::new(recv);
        if let Some(field) = TimeField::from_method(name) {
            self.expect_op("(")?;
            return match ty {
                Type::Timestamp => {
                    let zone = if self.eat_op(")") {
                        Zone::utc()
                    } else {
                        let (tz, c) = self.string_literal(&format!("{name}()"))?;
                        self.expect_op(")")?;
                        Zone::parse(&tz).or_else(|e| self.err(c, e))?
                    };
                    Ok((Node::TimeField(field, recv, zone), Type::Int))
                }
                Type::Duration => {
                    let Some(unit) = field.duration_unit() else {
                        return self.err(
                            col,
                            format!("`{name}` reads a timestamp, but this is a duration: a duration has getHours, getMinutes, getSeconds and getMilliseconds"),
                        );
                    };
                    self.expect_op(")")?;
                    Ok((Node::DurationIn(unit, recv), Type::Int))
                }
                _ => self.err(
                    col,
                    format!(
                        "`{name}` needs a timestamp (request.time) or a duration, but this is a {}",
                        ty.name()
                    ),
                ),
            };
        }
        let method = match name {
            "startsWith" => StrMethod::StartsWith,
            "endsWith" => StrMethod::EndsWith,
            "contains" => StrMethod::Contains,
            "matches" => {
                self.expect_type(col, text(ty), Type::String, "`matches`")?;
                self.expect_op("(")?;
                let (pattern, c) = self.string_literal("matches()")?;
                self.expect_op(")")?;
                return Ok((Node::Matches(recv, self.pattern(&pattern, c)?), Type::Bool));
            }
            _ => {
                return self.err(
                    col,
                    format!(
                        "unknown method `{name}`: strings have startsWith, endsWith, contains and matches; \
                         request.time has getHours, getDayOfWeek and the other get… methods"
                    ),
                );
            }
        };
        self.expect_type(col, text(ty), Type::String, &format!("`{name}`"))?;
        self.expect_op("(")?;
        let c = self.column();
        let (arg, aty) = self.expr()?;
        self.expect_type(c, text(aty), Type::String, &format!("`{name}`"))?;
        self.expect_op(")")?;
        Ok((Node::Method(method, recv, Box::new(arg)), Type::Bool))
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

    fn int_literal(&mut self) -> Option<i64> {
        let negative = self.peek_op("-");
        let at = self.pos + usize::from(negative);
        match self.tokens.get(at) {
            Some(Token {
                kind: Tok::Int(i), ..
            }) => {
                self.pos = at + 1;
                Some(if negative { -*i } else { *i })
            }
            _ => None,
        }
    }

    /// `["GET", "HEAD"]` or `[22, 5432]`: literals only, all of one type.
    fn list(&mut self) -> Result<Typed, Error> {
        let mut strings = Vec::new();
        let mut ints = Vec::new();
        if !self.eat_op("]") {
            loop {
                let c = self.column();
                if let Some(i) = self.int_literal() {
                    ints.push(i);
                } else {
                    let (s, _) = self.string_literal("a list")?;
                    strings.push(s);
                }
                if !strings.is_empty() && !ints.is_empty() {
                    return self.err(c, "a list holds strings or ints, not both");
                }
                if self.eat_op("]") {
                    break;
                }
                self.expect_op(",")?;
            }
        }
        Ok(if ints.is_empty() {
            (Node::Strings(strings), Type::StringList)
        } else {
            (Node::Ints(ints), Type::IntList)
        })
    }

    fn primary(&mut self) -> Result<Typed, Error> {
        let col = self.column();
        if let Some(i) = self.int_literal() {
            return Ok((Node::Int(i), Type::Int));
        }
        let Some(tok) = self.peek().cloned() else {
            return self.err(col, "the expression ends too early");
        };
        self.pos += 1;
        match tok.kind {
            Tok::Str(s) => Ok((Node::Str(s), Type::String)),
            Tok::Op("(") => {
                let inner = self.expr()?;
                self.expect_op(")")?;
                Ok(inner)
            }
            Tok::Op("[") => self.list(),
            Tok::Ident(name) => self.name(col, &name),
            other => self.err(col, format!("unexpected {}", other.describe())),
        }
    }

    fn name(&mut self, col: usize, name: &str) -> Result<Typed, Error> {
        match name {
            "true" => Ok((Node::Bool(true), Type::Bool)),
            "false" => Ok((Node::Bool(false), Type::Bool)),
            "request" | "origin" | "destination" | "resource" => {
                self.expect_op(".")?;
                let c = self.column();
                let field = match self.peek() {
                    Some(Token {
                        kind: Tok::Ident(f),
                        ..
                    }) => f.clone(),
                    _ => return self.err(c, format!("expected a field of `{name}`")),
                };
                self.pos += 1;
                self.attribute(c, name, &field)
            }
            "timestamp" => {
                self.expect_op("(")?;
                let (s, c) = self.string_literal("timestamp()")?;
                self.expect_op(")")?;
                match time::parse_timestamp(&s) {
                    Some(t) => Ok((Node::Timestamp(t), Type::Timestamp)),
                    None => self.err(
                        c,
                        format!("`{s}` is not a timestamp: write e.g. \"2027-01-01T00:00:00Z\" (RFC 3339, years 1 to 9999)"),
                    ),
                }
            }
            "duration" => {
                self.expect_op("(")?;
                let (s, c) = self.string_literal("duration()")?;
                self.expect_op(")")?;
                let d = time::parse_duration(&s).or_else(|e| self.err(c, e))?;
                Ok((Node::Duration(d), Type::Duration))
            }
            "has" => self.has(col),
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
                format!("unknown name `{name}`: use {ATTRIBUTES}, timestamp(), duration() or inIpRange()"),
            ),
        }
    }

    fn attribute(&mut self, c: usize, name: &str, field: &str) -> Result<Typed, Error> {
        match (name, field) {
            ("request", "path") => Ok((Node::Attr(Attr::Path), Type::String)),
            ("request", "host") => Ok((Node::Attr(Attr::Host), Type::String)),
            ("request", "method") => Ok((Node::Attr(Attr::Method), Type::String)),
            ("request", "time") => Ok((Node::Attr(Attr::Time), Type::Timestamp)),
            ("origin", "ip") => Ok((Node::Attr(Attr::Ip), Type::Ip)),
            ("destination", "ip") => Ok((Node::Attr(Attr::DestinationIp), Type::String)),
            ("destination", "port") => Ok((Node::Attr(Attr::DestinationPort), Type::Int)),
            ("request", "auth") => self.auth(),
            ("resource", _) => self.err(
                c,
                format!(
                    "resource.{field} names a Google Cloud resource; in castellan a binding is already on one app, \
                     so bind on that app instead (castellan access add APP MEMBER) and leave resource.{field} out"
                ),
            ),
            _ => self.err(
                c,
                format!("unknown attribute `{name}.{field}`: use {ATTRIBUTES}"),
            ),
        }
    }
}

/// A claim is text where text is wanted (`startsWith`, `matches`): it is checked when a request is
/// decided, and a claim that is not a string makes the test false.
fn text(t: Type) -> Type {
    if t == Type::Dyn { Type::String } else { t }
}
