//! The condition language's tokens: names, strings (CEL's quoted and raw forms), integers and
//! operators, each with the column it starts at.

use super::Error;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Op(&'static str),
}

impl Tok {
    pub(super) fn describe(&self) -> String {
        match self {
            Tok::Ident(s) => format!("`{s}`"),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::Int(i) => format!("{i}"),
            Tok::Op(o) => format!("`{o}`"),
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) kind: Tok,
    pub(super) column: usize,
}

pub(super) fn lex(src: &str) -> Result<Vec<Token>, Error> {
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
                ["!", "<", ">", "(", ")", "[", "]", ",", ".", "+", "-"]
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
