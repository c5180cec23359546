//! `request.auth`: who is asking, as conditions see it: the provider, groups, how they signed in
//! (`amr`, `acr`) and the claims the provider's `claims` key keeps; `has()` for a claim's presence.
//! Access Context Manager's `request.auth.access_levels` is refused, naming the level.

use super::super::lex::{Tok, Token};
use super::super::{Attr, Error, Node, Type};
use super::{Parser, Typed};

impl Parser {
    /// After `request.auth`; `c` is the column of `auth`.
    pub(super) fn auth(&mut self, c: usize) -> Result<Typed, Error> {
        self.expect_op(".")?;
        let col = self.column();
        let field = match self.peek() {
            Some(Token {
                kind: Tok::Ident(f),
                ..
            }) => f.clone(),
            _ => {
                return self.err(
                    col,
                    "expected a field of `request.auth`: provider, groups, amr, acr or claims",
                );
            }
        };
        self.pos += 1;
        match field.as_str() {
            "provider" => Ok((Node::Attr(Attr::AuthProvider), Type::String)),
            "acr" => Ok((Node::Attr(Attr::AuthAcr), Type::Dyn)),
            "groups" => Ok((Node::Attr(Attr::AuthGroups), Type::StringList)),
            "amr" => Ok((Node::Attr(Attr::AuthAmr), Type::StringList)),
            "claims" => {
                let name = self.claim_name()?;
                Ok((Node::Claim(name), Type::Dyn))
            }
            "access_levels" => self.access_levels(c),
            other => self.err(
                col,
                format!("unknown attribute `request.auth.{other}`: use request.auth.provider, .groups, .amr, .acr or .claims.NAME"),
            ),
        }
    }

    /// `.NAME` or `["NAME"]` after `request.auth.claims`.
    fn claim_name(&mut self) -> Result<String, Error> {
        let col = self.column();
        if self.eat_op("[") {
            let (name, _) = self.string_literal("request.auth.claims[…]")?;
            self.expect_op("]")?;
            return Ok(name);
        }
        if !self.eat_op(".") {
            return self.err(
                col,
                "name the claim: request.auth.claims.department, or request.auth.claims[\"https://example.com/roles\"]",
            );
        }
        match self.peek() {
            Some(Token {
                kind: Tok::Ident(n),
                ..
            }) => {
                let n = n.clone();
                self.pos += 1;
                Ok(n)
            }
            _ => self.err(
                col,
                "name the claim: request.auth.claims.department, or request.auth.claims[\"https://example.com/roles\"]",
            ),
        }
    }

    /// `has(request.auth.claims.NAME)`: whether the provider sent the claim.
    pub(super) fn has(&mut self, col: usize) -> Result<Typed, Error> {
        self.expect_op("(")?;
        let start = self.pos;
        let claims = ["request", ".", "auth", ".", "claims"];
        let matched = claims.iter().enumerate().all(|(i, want)| {
            matches!(self.tokens.get(start + i), Some(Token { kind: Tok::Ident(s), .. }) if s == want)
                || matches!(self.tokens.get(start + i), Some(Token { kind: Tok::Op(o), .. }) if o == want)
        });
        if !matched {
            return self.err(
                col,
                "has() takes a claim, e.g. has(request.auth.claims.department)",
            );
        }
        self.pos += claims.len();
        let name = self.claim_name()?;
        self.expect_op(")")?;
        Ok((Node::HasClaim(name), Type::Bool))
    }

    /// Access Context Manager's levels do not exist here: refused, naming the levels the
    /// expression mentions.
    fn access_levels(&self, c: usize) -> Result<Typed, Error> {
        let levels: Vec<String> = self
            .tokens
            .iter()
            .filter_map(|t| match &t.kind {
                Tok::Str(s) if s.contains("accessLevels/") => Some(format!("`{s}`")),
                _ => None,
            })
            .collect();
        let named = match levels.as_slice() {
            [] => "the access level it names".to_string(),
            [one] => format!("access level {one}"),
            many => format!("access levels {}", many.join(", ")),
        };
        self.err(
            c,
            format!(
                "request.auth.access_levels (Access Context Manager) does not exist in castellan, so {named} \
                 cannot be checked and the binding is refused rather than let through; for a network \
                 condition write inIpRange(origin.ip, \"10.0.0.0/8\")"
            ),
        )
    }
}
