//! The access rules file (`--acl-file`), in Mosquitto's `acl_file` syntax.
//!
//! ```text
//! # rules before any `user` line apply to clients without a user name
//! topic read public/#
//! user alice
//! topic readwrite alice/#
//! topic deny alice/secret/#
//! # patterns apply to every client; %c is its client id, %u its user name
//! pattern write devices/%c/state
//! ```
//!
//! `topic [read|write|readwrite|deny] <topic>` (no access type: readwrite)
//! and `pattern [read|write|readwrite|deny] <topic>`; topics may use the
//! `+` and `#` wildcards, which match as in subscriptions. Once a file is
//! given, a client may use only what a rule grants, and a `deny` rule wins
//! over any grant. The rules apply on top of the platform's own topic rules
//! (`identity`), to the topics as the client names them. This module only
//! parses and decides; the connection asks it at PUBLISH, at SUBSCRIBE and
//! again for each delivery.

use std::{fmt, path::Path};

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Receive messages: a SUBSCRIBE (checked with its filter) or one
    /// delivery (checked with the message's topic).
    Read,
    /// PUBLISH (and a will).
    Write,
}

/// What a rule grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grant {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Grant {
    fn allows(self, access: Access) -> bool {
        matches!(
            (self, access),
            (Grant::ReadWrite, _) | (Grant::Read, Access::Read) | (Grant::Write, Access::Write)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    grant: Grant,
    topic: String,
}

/// The parsed rules of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclRules {
    /// `topic` lines before any `user` line: clients without a user name.
    anonymous: Vec<Rule>,
    /// `topic` lines after `user {name}`, by name (in file order).
    users: Vec<(String, Vec<Rule>)>,
    /// `pattern` lines, wherever they are: every client.
    patterns: Vec<Rule>,
}

/// A line of the file that is not a rule; names the file and the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for AclError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "access rules file {}: {}", self.file, self.reason)
        } else {
            write!(
                f,
                "access rules file {} line {}: {}",
                self.file, self.line, self.reason
            )
        }
    }
}

impl std::error::Error for AclError {}

impl AclRules {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<AclRules, AclError> {
        let text = std::fs::read_to_string(path).map_err(|e| AclError {
            file: path.display().to_string(),
            line: 0,
            reason: format!("cannot read it: {e}"),
        })?;
        AclRules::parse(&text).map_err(|(line, reason)| AclError {
            file: path.display().to_string(),
            line,
            reason,
        })
    }

    /// Parses the text of a file; an error is the line number and why.
    pub fn parse(text: &str) -> Result<AclRules, (usize, String)> {
        let mut rules = AclRules::default();
        let mut user: Option<usize> = None;
        for (n, line) in text.lines().enumerate() {
            let n = n + 1;
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.trim_end();
            let (keyword, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
            let rest = rest.trim_start();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err((n, "`user` needs a user name".into()));
                    }
                    rules.users.push((rest.to_owned(), Vec::new()));
                    user = Some(rules.users.len() - 1);
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(keyword, rest).map_err(|reason| (n, reason))?;
                    match (keyword, user) {
                        ("pattern", _) => rules.patterns.push(rule),
                        (_, Some(i)) => rules.users[i].1.push(rule),
                        (_, None) => rules.anonymous.push(rule),
                    }
                }
                other => {
                    return Err((
                        n,
                        format!("unknown keyword `{other}` (expected user, topic or pattern)"),
                    ));
                }
            }
        }
        Ok(rules)
    }

    /// Whether the client `client_id` with user name `username` (`None`
    /// without one) may have `access` to `topic`: a topic name for a
    /// PUBLISH or a delivery, a filter for a SUBSCRIBE (granted when every
    /// topic it matches is inside a rule's topic).
    pub fn allows(
        &self,
        client_id: &str,
        username: Option<&str>,
        topic: &str,
        access: Access,
    ) -> bool {
        // Every `user` section of the name counts, wherever it is.
        let own: Vec<&Rule> = match username {
            None => self.anonymous.iter().collect(),
            Some(name) => self
                .users
                .iter()
                .filter(|(n, _)| n == name)
                .flat_map(|(_, r)| r.iter())
                .collect(),
        };
        let patterns: Vec<Rule> = self
            .patterns
            .iter()
            .filter_map(|rule| substitute(rule, client_id, username))
            .collect();
        let rules = || own.iter().copied().chain(patterns.iter());
        let covers = |rule: &Rule| match access {
            Access::Write => crate::mqtt::topic::matches(&rule.topic, topic),
            Access::Read => filter_within(topic, &rule.topic),
        };
        if rules().any(|r| r.grant == Grant::Deny && covers(r)) {
            return false;
        }
        rules().any(|r| r.grant.allows(access) && covers(r))
    }
}

fn parse_rule(keyword: &str, rest: &str) -> Result<Rule, String> {
    let (first, after) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
    let (grant, topic) = match first {
        "read" => (Grant::Read, after.trim_start()),
        "write" => (Grant::Write, after.trim_start()),
        "readwrite" => (Grant::ReadWrite, after.trim_start()),
        "deny" => (Grant::Deny, after.trim_start()),
        _ => (Grant::ReadWrite, rest),
    };
    if topic.is_empty() {
        return Err(format!("`{keyword}` needs a topic"));
    }
    if !crate::mqtt::topic::valid_topic_filter(topic) {
        return Err(format!(
            "`{topic}` is not a valid topic filter (`#` only as the last level, `+` and `#` \
             alone in their level)"
        ));
    }
    Ok(Rule {
        grant,
        topic: topic.to_owned(),
    })
}

/// A pattern with `%c` and `%u` replaced; `None` when it names the user
/// and the client has none, or when a value holds a wildcard or a level
/// separator (it would widen the rule).
fn substitute(rule: &Rule, client_id: &str, username: Option<&str>) -> Option<Rule> {
    let unsafe_value = |v: &str| v.contains(['+', '#', '/']);
    let mut topic = rule.topic.clone();
    if topic.contains("%c") {
        if unsafe_value(client_id) {
            return None;
        }
        topic = topic.replace("%c", client_id);
    }
    if topic.contains("%u") {
        let name = username.filter(|u| !unsafe_value(u))?;
        topic = topic.replace("%u", name);
    }
    Some(Rule {
        grant: rule.grant,
        topic,
    })
}

/// Whether every topic `filter` matches is matched by `rule` (both valid
/// filters), as Mosquitto checks a subscription against a rule.
fn filter_within(filter: &str, rule: &str) -> bool {
    // A rule starting with a wildcard does not reach `$` topics, nor a
    // filter that may match them.
    if filter.starts_with('$') && rule.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut r = rule.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(level)) if level != "#" => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read public/#
topic public/chat

user alice
topic readwrite alice/#
topic deny alice/secret/#
  topic write shared/in

user bob
topic read alice/+/status

pattern write devices/%c/state
pattern read users/%u/#
pattern deny users/%u/private/#
";

    /// (client id, user, topic or filter, access, allowed)
    #[test]
    fn decisions() {
        let rules = AclRules::parse(FILE).unwrap();
        use Access::{Read, Write};
        let cases: &[(&str, Option<&str>, &str, Access, bool)] = &[
            // Anonymous rules: read only, unless no access type (readwrite).
            ("c1", None, "public/news", Read, true),
            ("c1", None, "public/#", Read, true),
            ("c1", None, "public/news", Write, false),
            ("c1", None, "public/chat", Write, true),
            ("c1", None, "public/chat", Read, true),
            ("c1", None, "#", Read, false),
            ("c1", None, "alice/x", Read, false),
            // A user's rules apply to that user only, not to anonymous ones.
            ("c1", Some("alice"), "alice/a/b", Write, true),
            ("c1", Some("alice"), "alice/+/b", Read, true),
            ("c1", Some("alice"), "public/news", Read, false),
            ("c1", Some("alice"), "shared/in", Write, true),
            ("c1", Some("alice"), "shared/in", Read, false),
            // Deny wins over a broader grant, for topics and filters inside.
            ("c1", Some("alice"), "alice/secret/x", Write, false),
            ("c1", Some("alice"), "alice/secret/#", Read, false),
            // `#` takes in its parent level, as in subscriptions.
            ("c1", Some("alice"), "alice/secret", Read, false),
            ("c1", Some("alice"), "alice/secrets", Read, true),
            // A filter wider than the deny is granted; deliveries inside
            // the deny are then refused one by one.
            ("c1", Some("alice"), "alice/#", Read, true),
            ("c1", Some("alice"), "alice/secret/y", Read, false),
            ("c1", Some("bob"), "alice/x/status", Read, true),
            ("c1", Some("bob"), "alice/+/status", Read, true),
            ("c1", Some("bob"), "alice/#", Read, false),
            ("c1", Some("bob"), "alice/x/status", Write, false),
            ("c1", Some("carol"), "alice/x", Read, false),
            // Patterns: every client, %c and %u substituted.
            ("dev7", None, "devices/dev7/state", Write, true),
            ("dev7", Some("carol"), "devices/dev7/state", Write, true),
            ("dev7", None, "devices/dev8/state", Write, false),
            ("dev7", Some("carol"), "users/carol/inbox", Read, true),
            ("dev7", Some("carol"), "users/carol/#", Read, true),
            ("dev7", Some("carol"), "users/dave/inbox", Read, false),
            ("dev7", Some("carol"), "users/carol/private/x", Read, false),
            ("dev7", None, "users//inbox", Read, false),
            // A client id or user name with a wildcard does not widen a
            // pattern.
            ("+", None, "devices/+/state", Write, false),
            ("dev7", Some("#"), "users/#", Read, false),
            ("a/b", None, "devices/a/b/state", Write, false),
            // Wildcards at the start do not reach `$` topics.
            ("c1", Some("alice"), "$SYS/x", Read, false),
        ];
        for (client, user, topic, access, allowed) in cases {
            assert_eq!(
                rules.allows(client, *user, topic, *access),
                *allowed,
                "{client} {user:?} {access:?} {topic}"
            );
        }
    }

    #[test]
    fn a_wildcard_rule_and_dollar_topics() {
        let rules = AclRules::parse("topic #\ntopic read $SYS/#\n").unwrap();
        assert!(rules.allows("c", None, "a/b", Access::Write));
        assert!(rules.allows("c", None, "#", Access::Read));
        assert!(!rules.allows("c", None, "$SYS/x", Access::Write));
        assert!(rules.allows("c", None, "$SYS/broker/#", Access::Read));
        assert!(rules.allows("c", None, "$SYS/broker/uptime", Access::Read));
    }

    #[test]
    fn an_empty_file_denies_everything() {
        let rules = AclRules::parse("# nothing\n\n").unwrap();
        assert!(!rules.allows("c", None, "a", Access::Write));
        assert!(!rules.allows("c", Some("u"), "a", Access::Read));
    }

    #[test]
    fn parse_errors_name_the_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "topic read a\nfrobnicate x\n",
                2,
                "unknown keyword `frobnicate`",
            ),
            ("user\n", 1, "`user` needs a user name"),
            ("\n\ntopic read\n", 3, "`topic` needs a topic"),
            ("pattern deny\n", 1, "`pattern` needs a topic"),
            ("topic a/#/b\n", 1, "not a valid topic filter"),
            ("topic write a/b+\n", 1, "not a valid topic filter"),
        ];
        for (text, line, reason) in cases {
            let (got_line, got) = AclRules::parse(text).unwrap_err();
            assert_eq!(got_line, *line, "{text:?}");
            assert!(got.contains(reason), "{text:?}: {got}");
        }
        // A topic with a space is taken whole after the access type.
        let rules = AclRules::parse("topic write a b/c\n").unwrap();
        assert!(rules.allows("c", None, "a b/c", Access::Write));
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acl");
        std::fs::write(&path, "topic read a\nbad line\n").unwrap();
        let err = AclRules::load(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("line 2"),
            "{err}"
        );
        let missing = AclRules::load(&dir.path().join("none")).unwrap_err();
        assert!(missing.to_string().contains("cannot read it"), "{missing}");
    }
}
