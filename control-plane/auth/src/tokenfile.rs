//! Static bearer tokens from a token file (`--token-auth-file`), in the upstream CSV format:
//!
//! ```text
//! token,user,uid,"group1,group2"
//! ```
//!
//! The group column is optional. Blank lines and lines starting with `#` are skipped. Tokens are
//! compared in constant time, and never appear in logs or `Debug` output.

use std::fmt;
use std::path::Path;

use crate::{constant_time_eq, Error, Result, UserInfo};

struct Entry {
    token: String,
    user: UserInfo,
}

/// The users of a token file.
pub struct TokenAuthenticator {
    entries: Vec<Entry>,
}

impl fmt::Debug for TokenAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthenticator")
            .field(
                "users",
                &self.entries.iter().map(|e| &e.user.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl TokenAuthenticator {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            action: "reading token file",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|(line, message)| Error::TokenFile {
            path: path.to_path_buf(),
            line,
            message,
        })
    }

    /// Parses the file's text; errors carry the 1-based line number.
    fn parse(text: &str) -> std::result::Result<Self, (usize, String)> {
        let mut entries: Vec<Entry> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let fields = split_csv_line(trimmed).map_err(|m| (line_no, m))?;
            if fields.len() < 3 {
                return Err((
                    line_no,
                    format!("expected token,user,uid[,groups], found {} fields", fields.len()),
                ));
            }
            let (token, name, uid) = (&fields[0], &fields[1], &fields[2]);
            if token.is_empty() || name.is_empty() {
                return Err((line_no, "token and user must not be empty".into()));
            }
            if entries.iter().any(|e| e.token == *token) {
                return Err((line_no, "duplicate token".into()));
            }
            let groups = fields
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            entries.push(Entry {
                token: token.clone(),
                user: UserInfo::authenticated(name.clone(), uid.clone(), groups),
            });
        }
        Ok(TokenAuthenticator { entries })
    }

    /// The user of a bearer token, if the file has it. Every entry is compared, in constant
    /// time, whatever matches.
    pub fn authenticate(&self, token: &str) -> Option<UserInfo> {
        let mut found = None;
        for e in &self.entries {
            if constant_time_eq(e.token.as_bytes(), token.as_bytes()) && found.is_none() {
                found = Some(e.user.clone());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Splits one CSV record: commas separate fields, double quotes enclose fields that contain
/// commas, `""` inside quotes is a literal quote, leading spaces of a field are dropped.
fn split_csv_line(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GROUP_AUTHENTICATED;

    #[test]
    fn parses_upstream_format_and_authenticates() {
        let a = TokenAuthenticator::parse(
            "# comment\n\
             s3cret,alice,1001,\"system:masters,devs\"\n\
             \n\
             other,bob,1002\n",
        )
        .unwrap();
        assert_eq!(a.len(), 2);
        let alice = a.authenticate("s3cret").unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.uid, "1001");
        assert_eq!(alice.groups, ["system:masters", "devs", GROUP_AUTHENTICATED]);
        let bob = a.authenticate("other").unwrap();
        assert_eq!(bob.groups, [GROUP_AUTHENTICATED]);
        assert_eq!(a.authenticate("s3cre"), None);
        assert_eq!(a.authenticate("s3cret2"), None);
        assert_eq!(a.authenticate(""), None);
    }

    #[test]
    fn reports_bad_lines_with_their_number() {
        let err = TokenAuthenticator::parse("ok,u,1\nbroken,only\n").err().unwrap();
        assert_eq!(err.0, 2);
        let err = TokenAuthenticator::parse("t,u,1,\"a,b\n").err().unwrap();
        assert!(err.1.contains("unterminated"));
        let err = TokenAuthenticator::parse("t,u,1\nt,v,2\n").err().unwrap();
        assert_eq!(err, (2, "duplicate token".to_string()));
    }

    #[test]
    fn reads_a_file_and_hides_tokens_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.csv");
        std::fs::write(&path, "topsecret,admin,0,system:masters\n").unwrap();
        let a = TokenAuthenticator::from_file(&path).unwrap();
        assert_eq!(a.authenticate("topsecret").unwrap().groups[0], "system:masters");
        assert!(!format!("{a:?}").contains("topsecret"));
        assert!(TokenAuthenticator::from_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(
            split_csv_line(r#"a, "b ""x"", c",d"#).unwrap(),
            ["a", "b \"x\", c", "d"]
        );
        assert_eq!(split_csv_line("a,,").unwrap(), ["a", "", ""]);
    }
}
