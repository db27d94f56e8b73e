//! Bearer tokens with roles, from a TOML file:
//!
//! ```toml
//! [[token]]
//! name = "ci"            # recorded as the actor in the audit trail
//! role = "operator"      # viewer | gateway | operator | admin
//! token = "…"            # at least 16 characters
//! ```

use serde::Deserialize;
use std::path::Path;

/// Viewer reads; gateway also reports its measurements; operator also
/// places and deletes; admin also controls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    /// A viewer that may also report what a gateway measured.
    Gateway,
    Operator,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Gateway => "gateway",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub name: String,
    pub role: Role,
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    token: Vec<Token>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{path}: {msg}")]
    Bad { path: String, msg: String },
}

#[derive(Clone, Debug, Default)]
pub struct Tokens(Vec<Token>);

impl Tokens {
    pub fn new(tokens: Vec<Token>) -> Result<Tokens, TokensError> {
        Self::check(tokens, "tokens")
    }

    pub fn load(path: &Path) -> Result<Tokens, TokensError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TokensError::Bad {
            path: name.clone(),
            msg: e.to_string(),
        })?;
        let f: File = toml::from_str(&text).map_err(|e| TokensError::Bad {
            path: name.clone(),
            msg: e.to_string(),
        })?;
        Self::check(f.token, &name)
    }

    fn check(tokens: Vec<Token>, path: &str) -> Result<Tokens, TokensError> {
        for (i, t) in tokens.iter().enumerate() {
            let bad = |msg: &str| TokensError::Bad {
                path: path.to_string(),
                msg: format!("token[{i}] ({}): {msg}", t.name),
            };
            if t.token.len() < 16 {
                return Err(bad("the token must be at least 16 characters"));
            }
            if t.name.trim().is_empty() {
                return Err(bad("the name must not be empty"));
            }
            if tokens[..i].iter().any(|o| o.token == t.token) {
                return Err(bad("the same token appears twice"));
            }
        }
        Ok(Tokens(tokens))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The holder of `presented`, comparing every token in constant time.
    pub fn find(&self, presented: &str) -> Option<&Token> {
        let mut found = None;
        for t in &self.0 {
            if ct_eq(t.token.as_bytes(), presented.as_bytes()) {
                found = Some(t);
            }
        }
        found
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
