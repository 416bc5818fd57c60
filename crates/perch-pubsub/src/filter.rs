//! Subscription filters (SPEC.md §7.7): `attributes:KEY`, `attributes.KEY = "v"`,
//! `attributes.KEY != "v"`, `hasPrefix(attributes.KEY, "p")`, `NOT`/`-`, `AND`, `OR` and
//! parentheses. Mixing AND and OR at one level without parentheses is refused, as Google does.
//!
//! Parsing is apart from evaluation: `Filter::parse` once at subscription create, then
//! `matches` per message.

use std::collections::BTreeMap;

/// Longest filter accepted (Google: 256 bytes).
pub const FILTER_MAX_BYTES: usize = 256;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Has(String),
    Equals(String, String),
    NotEquals(String, String),
    HasPrefix(String, String),
    Not(Box<Filter>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    Colon,
    Dot,
    Eq,
    Ne,
    Minus,
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ',' | ':' | '.' | '=' | '-' => {
                chars.next();
                out.push(match c {
                    '(' => Token::LParen,
                    ')' => Token::RParen,
                    ',' => Token::Comma,
                    ':' => Token::Colon,
                    '.' => Token::Dot,
                    '=' => Token::Eq,
                    _ => Token::Minus,
                });
            }
            '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    return Err("'!' must be followed by '='".into());
                }
                out.push(Token::Ne);
            }
            '"' => {
                chars.next();
                let mut lit = String::new();
                loop {
                    match chars.next() {
                        None => return Err("unterminated string literal".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => lit.push('\n'),
                            Some('t') => lit.push('\t'),
                            Some(other) => lit.push(other),
                            None => return Err("unterminated escape".into()),
                        },
                        Some(ch) => lit.push(ch),
                    }
                }
                out.push(Token::Str(lit));
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut id = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_ascii_alphanumeric() || ch == '_' || (ch == '-' && !id.is_empty()) {
                        id.push(ch);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(Token::Ident(id));
            }
            other => return Err(format!("unexpected character '{other}'")),
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn expect(&mut self, want: Token, what: &str) -> Result<(), String> {
        match self.next() {
            Some(t) if t == want => Ok(()),
            _ => Err(format!("expected {what}")),
        }
    }
    fn is_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(i)) if i == kw)
    }

    fn expr(&mut self) -> Result<Filter, String> {
        let first = self.factor()?;
        let mut terms = vec![first];
        let mut op: Option<&'static str> = None;
        while self.is_keyword("AND") || self.is_keyword("OR") {
            let this = if self.is_keyword("AND") { "AND" } else { "OR" };
            if op.is_some_and(|o| o != this) {
                return Err("AND and OR cannot be mixed without parentheses".into());
            }
            op = Some(this);
            self.next();
            terms.push(self.factor()?);
        }
        Ok(match (op, terms.len()) {
            (_, 1) => terms.pop().ok_or("empty expression")?,
            (Some("AND"), _) => Filter::And(terms),
            _ => Filter::Or(terms),
        })
    }

    fn factor(&mut self) -> Result<Filter, String> {
        if self.is_keyword("NOT") {
            self.next();
            return Ok(Filter::Not(Box::new(self.factor()?)));
        }
        match self.peek() {
            Some(Token::Minus) => {
                self.next();
                Ok(Filter::Not(Box::new(self.factor()?)))
            }
            Some(Token::LParen) => {
                self.next();
                let inner = self.expr()?;
                self.expect(Token::RParen, "')'")?;
                Ok(inner)
            }
            _ if self.is_keyword("hasPrefix") => {
                self.next();
                self.expect(Token::LParen, "'(' after hasPrefix")?;
                let key = self.attribute_key(true)?;
                self.expect(Token::Comma, "',' in hasPrefix")?;
                let prefix = self.string()?;
                self.expect(Token::RParen, "')' after hasPrefix")?;
                Ok(Filter::HasPrefix(key, prefix))
            }
            _ if self.is_keyword("attributes") => {
                self.next();
                match self.next() {
                    Some(Token::Colon) => Ok(Filter::Has(self.key()?)),
                    Some(Token::Dot) => {
                        let key = self.key()?;
                        match self.next() {
                            Some(Token::Eq) => Ok(Filter::Equals(key, self.string()?)),
                            Some(Token::Ne) => Ok(Filter::NotEquals(key, self.string()?)),
                            _ => Err("expected '=' or '!=' after an attribute".into()),
                        }
                    }
                    _ => Err("expected ':' or '.' after 'attributes'".into()),
                }
            }
            _ => Err("expected 'attributes', 'hasPrefix', 'NOT' or '('".into()),
        }
    }

    fn attribute_key(&mut self, with_dot: bool) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(i)) if i == "attributes" => {}
            _ => return Err("expected 'attributes'".into()),
        }
        if with_dot {
            self.expect(Token::Dot, "'.' after 'attributes'")?;
        }
        self.key()
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(k)) | Some(Token::Str(k)) => Ok(k),
            _ => Err("expected an attribute key".into()),
        }
    }

    fn string(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Str(s)) => Ok(s),
            _ => Err("expected a string literal in double quotes".into()),
        }
    }
}

impl Filter {
    /// Parses a filter; the error says what is wrong and where it was expected.
    pub fn parse(text: &str) -> Result<Filter, String> {
        if text.len() > FILTER_MAX_BYTES {
            return Err(format!(
                "the filter has {} bytes; the limit is {FILTER_MAX_BYTES}",
                text.len()
            ));
        }
        let mut p = Parser {
            tokens: tokenize(text)?,
            pos: 0,
        };
        let f = p.expr()?;
        if p.pos != p.tokens.len() {
            return Err("unexpected text after the end of the filter".into());
        }
        Ok(f)
    }

    /// Whether a message with these attributes passes.
    pub fn matches(&self, attributes: &BTreeMap<String, String>) -> bool {
        match self {
            Filter::Has(k) => attributes.contains_key(k),
            Filter::Equals(k, v) => attributes.get(k) == Some(v),
            Filter::NotEquals(k, v) => attributes.get(k) != Some(v),
            Filter::HasPrefix(k, p) => attributes.get(k).is_some_and(|v| v.starts_with(p.as_str())),
            Filter::Not(f) => !f.matches(attributes),
            Filter::And(fs) => fs.iter().all(|f| f.matches(attributes)),
            Filter::Or(fs) => fs.iter().any(|f| f.matches(attributes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn check(filter: &str, pairs: &[(&str, &str)], expected: bool) {
        let f = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
        assert_eq!(f.matches(&attrs(pairs)), expected, "{filter} on {pairs:?}");
    }

    #[test]
    fn the_documented_forms_evaluate() {
        check(
            r#"attributes.subFolder = "temperature""#,
            &[("subFolder", "temperature")],
            true,
        );
        check(
            r#"attributes.subFolder = "temperature""#,
            &[("subFolder", "other")],
            false,
        );
        check(r#"attributes.subFolder != "temperature""#, &[], true);
        check("attributes:deviceId", &[("deviceId", "x")], true);
        check("attributes:deviceId", &[], false);
        check(
            r#"hasPrefix(attributes.deviceId, "pi-")"#,
            &[("deviceId", "pi-7")],
            true,
        );
        check(r#"NOT attributes:x"#, &[], true);
        check(r#"-attributes:x"#, &[("x", "")], false);
        check(
            r#"attributes:a AND attributes.b = "1""#,
            &[("a", ""), ("b", "1")],
            true,
        );
        check(
            r#"attributes:a OR attributes:b OR attributes:c"#,
            &[("c", "")],
            true,
        );
        check(
            r#"(attributes:a OR attributes:b) AND NOT attributes:c"#,
            &[("b", ""), ("c", "")],
            false,
        );
        check(
            r#"attributes."weird key" = "q\"uote""#,
            &[("weird key", "q\"uote")],
            true,
        );
        check(r#"attributes.dash-key = "v""#, &[("dash-key", "v")], true);
    }

    #[test]
    fn malformed_filters_are_refused() {
        for bad in [
            "",
            "attributes",
            "attributes.a = b",
            r#"attributes:a AND attributes:b OR attributes:c"#,
            "(attributes:a",
            r#"hasPrefix(attributes.a "x")"#,
            "data = 1",
            "attributes:a extra",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(Filter::parse(&format!("attributes:{}", "a".repeat(300))).is_err());
    }
}
