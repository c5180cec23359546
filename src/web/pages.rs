//! The HTML pages castellan shows people: sign-in, access denied, errors, sign-out.
//!
//! Every value is escaped with [`esc`]; pages carry no script and are served with a strict CSP.

use std::fmt::Write;

/// Where castellan's one script is served, and the script: the passkey ceremonies on the sign-in
/// and account pages. Pages that load it allow exactly that file in their CSP.
pub const PASSKEY_SCRIPT_PATH: &str = "/.castellan/passkey.js";
pub const PASSKEY_SCRIPT: &str = include_str!("../../assets/passkey.js");

/// The markup that loads the passkey script on a page.
pub fn passkey_script_tag() -> String {
    format!("<script src=\"{PASSKEY_SCRIPT_PATH}\" defer></script>")
}

/// Escapes text for HTML element content and double-quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A Unix time as people read it on castellan's pages: `2026-11-29 01:02:03 UTC`.
pub fn when(secs: i64) -> String {
    crate::clock::format_rfc3339(secs)
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// Escapes a value for a URL query component.
pub fn q(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f4f5f7;color:#1d2433;margin:0}\
main{max-width:26rem;margin:8vh auto;background:#fff;border-radius:10px;box-shadow:0 1px 4px #0002;padding:2rem 2.2rem}\
h1{font-size:1.35rem;margin:0 0 1rem}p{line-height:1.45}.muted{color:#5b6478;font-size:.9rem}\
label{display:block;margin:.8rem 0 .25rem;font-weight:600;font-size:.9rem}\
input[type=email],input[type=password],input[type=text]{width:100%;box-sizing:border-box;padding:.55rem .6rem;border:1px solid #b9c0cf;border-radius:6px;font-size:1rem}\
button,.button{display:block;width:100%;box-sizing:border-box;margin-top:1.1rem;padding:.6rem;border:0;border-radius:6px;background:#2454d6;color:#fff;font-size:1rem;text-align:center;text-decoration:none;cursor:pointer}\
.secondary{background:#e8ebf2;color:#1d2433}.error{background:#fdecec;color:#8a1c1c;padding:.6rem .8rem;border-radius:6px}\
.notice{background:#eaf1fd;color:#17407a;padding:.6rem .8rem;border-radius:6px}.sep{text-align:center;color:#8a91a3;margin:1.2rem 0 .2rem;font-size:.85rem}code{background:#eef0f5;padding:.05rem .3rem;border-radius:4px}";

/// A whole page around `body`.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{} · castellan</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        esc(title)
    )
}

/// One way to sign in with an OpenID provider on the chooser.
pub struct ProviderChoice<'a> {
    pub display_name: &'a str,
    pub href: String,
}

pub struct SignIn<'a> {
    pub providers: Vec<ProviderChoice<'a>>,
    /// `Some((csrf token, prefilled email))` when local accounts are on.
    pub local: Option<(String, &'a str)>,
    pub return_to: &'a str,
    /// The app with a step-up this sign-in is for (sent back with the form).
    pub app: Option<&'a str>,
    /// What that app asks for, as HTML.
    pub notice: Option<String>,
    pub error: Option<&'a str>,
}

pub fn sign_in(s: &SignIn) -> String {
    let mut body = String::from("<h1>Sign in</h1>");
    if let Some(n) = &s.notice {
        body.push_str(n);
    }
    if let Some(e) = s.error {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
    }
    for p in &s.providers {
        let _ = write!(
            body,
            "<a class=\"button\" href=\"{}\">Sign in with {}</a>",
            esc(&p.href),
            esc(p.display_name)
        );
    }
    if let Some((csrf, email)) = &s.local {
        if !s.providers.is_empty() {
            body.push_str("<p class=\"sep\">or with a castellan account</p>");
        }
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/.castellan/sign_in\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"rd\" value=\"{}\">{}\
             <label for=\"email\">Email</label><input id=\"email\" type=\"email\" name=\"email\" autocomplete=\"username\" required value=\"{}\">\
             <label for=\"password\">Password</label><input id=\"password\" type=\"password\" name=\"password\" autocomplete=\"current-password\" required>\
             <button type=\"submit\">Sign in</button></form>",
            esc(csrf),
            esc(s.return_to),
            s.app
                .map(|a| format!("<input type=\"hidden\" name=\"app\" value=\"{}\">", esc(a)))
                .unwrap_or_default(),
            esc(email)
        );
        // Shown by the script when the browser supports passkeys.
        let _ = write!(
            body,
            "<button type=\"button\" class=\"secondary\" data-passkey=\"sign-in\" data-csrf=\"{}\" data-rd=\"{}\" hidden>\
             Sign in with a passkey</button><p class=\"error\" role=\"alert\" data-passkey-status hidden></p>{}",
            esc(csrf),
            esc(s.return_to),
            passkey_script_tag()
        );
    }
    page("Sign in", &body)
}

pub struct Denied<'a> {
    pub email: &'a str,
    pub app: &'a str,
    pub reference: &'a str,
    /// Sign in as someone else (on castellan's own pages), then back here.
    pub switch_href: String,
    /// Ask for access (on castellan's own pages), then back here.
    pub request_href: String,
    /// The person's latest access request for this app: (status, when, decided by).
    pub request: Option<(&'a str, String, &'a str)>,
    /// What the person can do about it themselves (a device certificate to present), if anything.
    pub hint: Option<&'a str>,
}

pub fn denied(d: &Denied) -> String {
    let status = match &d.request {
        Some(("pending", when, _)) => format!(
            "<p class=\"notice\" role=\"status\">You asked for access on {}. An administrator has been told; reload this page once they approve.</p>",
            esc(when)
        ),
        Some(("denied", when, by)) => format!(
            "<p class=\"error\" role=\"status\">Your request was denied on {} by {}. You can ask again with a reason.</p>",
            esc(when),
            esc(by)
        ),
        _ => String::new(),
    };
    let status = match d.hint {
        Some(h) => format!("<p class=\"notice\" role=\"status\">{}</p>{status}", esc(h)),
        None => status,
    };
    let pending = matches!(d.request, Some(("pending", _, _)));
    page(
        "Access denied",
        &format!(
            "<h1>You don't have access</h1><p>You are signed in as <b>{}</b>, which has no access to <b>{}</b>.</p>\
             {status}<a class=\"button\" href=\"{}\">{}</a>\
             <a class=\"button secondary\" href=\"{}\">Sign in with another account</a>\
             <p class=\"muted\">Reference: <code>{}</code></p>",
            esc(d.email),
            esc(d.app),
            esc(&d.request_href),
            if pending {
                "Update my request"
            } else {
                "Request access"
            },
            esc(&d.switch_href),
            esc(d.reference)
        ),
    )
}

/// The form that sends an access request, on castellan's own host.
pub fn request_access(app: &str, csrf: &str, return_to: &str) -> String {
    page(
        "Request access",
        &format!(
            "<h1>Request access to {}</h1><p>The app's administrators are told at once; you get in as soon as one approves.</p>\
             <form method=\"post\" action=\"/.castellan/request_access\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"app\" value=\"{}\">\
             <input type=\"hidden\" name=\"rd\" value=\"{}\">\
             <label for=\"reason\">Reason (optional)</label><input id=\"reason\" type=\"text\" name=\"reason\" maxlength=\"500\">\
             <button type=\"submit\">Send the request</button></form>",
            esc(app),
            esc(csrf),
            esc(app),
            esc(return_to)
        ),
    )
}

pub fn request_sent(app: &str, new: bool, return_to: &str) -> String {
    page(
        "Access requested",
        &format!(
            "<h1>Access requested</h1><p>{} for <b>{}</b>. The app's administrators have been told; you will get in as soon as one approves.</p>\
             <a class=\"button\" href=\"{}\">Back to the app</a>",
            if new {
                "Your request was sent"
            } else {
                "Your earlier request was updated"
            },
            esc(app),
            esc(return_to)
        ),
    )
}

pub fn error(title: &str, message: &str, reference: &str) -> String {
    page(
        title,
        &format!(
            "<h1>{}</h1><p>{}</p><p class=\"muted\">Reference: <code>{}</code></p>",
            esc(title),
            esc(message),
            esc(reference)
        ),
    )
}

pub fn sign_out(csrf: &str, email: Option<&str>) -> String {
    let who = email
        .map(|e| format!("<p>You are signed in as <b>{}</b>.</p>", esc(e)))
        .unwrap_or_default();
    page(
        "Sign out",
        &format!(
            "<h1>Sign out</h1>{who}<form method=\"post\" action=\"/.castellan/sign_out\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\"><button type=\"submit\">Sign out</button></form>",
            esc(csrf)
        ),
    )
}

pub fn signed_out() -> String {
    page(
        "Signed out",
        "<h1>You are signed out</h1><p>Your castellan session has ended.</p><a class=\"button\" href=\"/.castellan/sign_in\">Sign in again</a>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let html = denied(&Denied {
            email: "<script>x</script>@example.com",
            app: "a\"b",
            reference: "r",
            switch_href: "/x?a=1&b=2".into(),
            request_href: "/r".into(),
            request: Some(("denied", "2026-11-28".into(), "<b>admin</b>")),
            hint: Some("<i>install</i>"),
        });
        assert!(html.contains("&lt;b&gt;admin"));
        assert!(html.contains("&lt;i&gt;install"));
        assert!(!html.contains("<script>x"));
        assert!(html.contains("&lt;script&gt;"));
        assert!(html.contains("a&quot;b"));
        assert!(html.contains("/x?a=1&amp;b=2"));
    }
}
