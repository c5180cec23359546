//! `request.auth`: who is asking, as conditions see it: the provider, groups, how they signed in
//! (`amr`, `acr`) and the claims the provider's `claims` key keeps; `has()` for a claim's presence.
//! `request.auth.access_levels`: the configured access levels the request meets (IAP's form,
//! `"accessPolicies/1/accessLevels/corp" in request.auth.access_levels`).

use super::super::lex::{Tok, Token};
use super::super::{Attr, Error, Node, Type};
use super::{Parser, Typed};

impl Parser {
    /// After `request.auth`; `c` is the column of `auth`.
    pub(super) fn auth(&mut self) -> Result<Typed, Error> {
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
                    "expected a field of `request.auth`: provider, groups, amr, acr, claims or access_levels",
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
            "access_levels" => Ok((Node::Attr(Attr::AccessLevels), Type::StringList)),
            other => self.err(
                col,
                format!("unknown attribute `request.auth.{other}`: use request.auth.provider, .groups, .amr, .acr, .claims.NAME or .access_levels"),
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
}
