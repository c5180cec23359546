//! Step-up: what an app asks of *how* a person signed in (`require_second_factor`,
//! `require_passkey`, `require_acr`), and what a sign-in lacks of it. The gate and the token
//! endpoint both ask [`StepUp::shortfall`], so a browser, a script and a tunnel meet the same bar.
//!
//! The evidence is the sign-in's RFC 8176 `amr` and its `acr`: the provider's, from its signed ID
//! token, or castellan's own for local accounts (`pwd`; `pwd otp mfa` with a code; `hwk user mfa`
//! with a passkey, which castellan accepts only with user verification).

use super::Identity;

/// An app's step-up requirements; empty (the default) asks nothing beyond signing in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepUp {
    /// `require_second_factor`: the sign-in used more than one factor (`amr` has `mfa`).
    pub second_factor: bool,
    /// `require_passkey`: the sign-in proved a hardware-bound key (`amr` has `hwk`), as IAP's
    /// `SECURE_KEY` re-authentication does.
    pub passkey: bool,
    /// `require_acr`: the provider's `acr` is one of these (most preferred first; sent as
    /// `acr_values`).
    pub acr: Vec<String>,
}

/// What a sign-in lacks of an app's [`StepUp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    SecondFactor,
    Passkey,
    Acr,
}

impl Shortfall {
    /// The label in answers to scripts and in audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Shortfall::SecondFactor => "second_factor",
            Shortfall::Passkey => "passkey",
            Shortfall::Acr => "acr",
        }
    }
}

impl StepUp {
    pub fn is_empty(&self) -> bool {
        !self.second_factor && !self.passkey && self.acr.is_empty()
    }

    /// What `who`'s sign-in lacks, if anything. A passkey is asked for first: signing in with one
    /// also gives the second factor.
    pub fn shortfall(&self, who: &Identity) -> Option<Shortfall> {
        let has = |m: &str| who.amr.iter().any(|a| a == m);
        if self.passkey && !has("hwk") {
            return Some(Shortfall::Passkey);
        }
        if self.second_factor && !has("mfa") {
            return Some(Shortfall::SecondFactor);
        }
        let acr_met = who
            .acr
            .as_deref()
            .is_some_and(|a| self.acr.iter().any(|want| want == a));
        if !self.acr.is_empty() && !acr_met {
            return Some(Shortfall::Acr);
        }
        None
    }

    /// What the app asks, in words: "a second factor", "a passkey", "a sign-in at level X".
    pub fn describe(&self, shortfall: Shortfall) -> String {
        match shortfall {
            Shortfall::SecondFactor => "a sign-in with a second factor".into(),
            Shortfall::Passkey => "a sign-in with a passkey or security key".into(),
            Shortfall::Acr => format!(
                "a sign-in at authentication level {}",
                self.acr
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        }
    }

    /// The `acr_values` to ask a provider for (space-separated, most preferred first), if any.
    pub fn acr_values(&self) -> Option<String> {
        (!self.acr.is_empty()).then(|| self.acr.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed_in(amr: &[&str], acr: Option<&str>) -> Identity {
        let mut who = Identity::local("a@example.com").signed_in_with(amr);
        who.acr = acr.map(str::to_string);
        who
    }

    #[test]
    fn each_requirement_reads_the_sign_in_it_names() {
        let none = StepUp::default();
        assert!(none.is_empty());
        assert_eq!(none.shortfall(&signed_in(&[], None)), None);

        let mfa = StepUp {
            second_factor: true,
            ..StepUp::default()
        };
        assert_eq!(
            mfa.shortfall(&signed_in(&["pwd"], None)),
            Some(Shortfall::SecondFactor)
        );
        // `otp` alone is a single factor (a code without a password): only `mfa` says two.
        assert_eq!(
            mfa.shortfall(&signed_in(&["otp"], None)),
            Some(Shortfall::SecondFactor)
        );
        assert_eq!(
            mfa.shortfall(&signed_in(&["pwd", "otp", "mfa"], None)),
            None
        );
        assert_eq!(
            mfa.shortfall(&signed_in(&["hwk", "user", "mfa"], None)),
            None
        );

        let passkey = StepUp {
            passkey: true,
            second_factor: true,
            ..StepUp::default()
        };
        assert_eq!(
            passkey.shortfall(&signed_in(&["pwd", "otp", "mfa"], None)),
            Some(Shortfall::Passkey),
            "a code is a second factor, not a passkey"
        );
        assert_eq!(
            passkey.shortfall(&signed_in(&["hwk", "user", "mfa"], None)),
            None
        );

        let acr = StepUp {
            acr: vec!["urn:example:strong".into(), "urn:example:phr".into()],
            ..StepUp::default()
        };
        assert_eq!(
            acr.shortfall(&signed_in(&["pwd", "mfa"], None)),
            Some(Shortfall::Acr),
            "no acr is not any acr"
        );
        assert_eq!(
            acr.shortfall(&signed_in(&[], Some("urn:example:basic"))),
            Some(Shortfall::Acr)
        );
        assert_eq!(
            acr.shortfall(&signed_in(&[], Some("urn:example:phr"))),
            None
        );
        assert_eq!(
            acr.shortfall(&signed_in(&[], Some("URN:EXAMPLE:PHR"))),
            Some(Shortfall::Acr),
            "acr values are compared exactly"
        );
        assert_eq!(
            acr.acr_values().as_deref(),
            Some("urn:example:strong urn:example:phr")
        );
        assert_eq!(
            acr.describe(Shortfall::Acr),
            "a sign-in at authentication level \"urn:example:strong\" or \"urn:example:phr\""
        );
    }
}
