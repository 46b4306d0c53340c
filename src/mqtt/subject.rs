//! MQTT topics and filters as NATS subjects (and JetStream key-value keys),
//! for routing between cluster nodes.
//!
//! A topic's levels become a subject's tokens, each escaped so that no
//! character NATS treats specially survives:
//!
//! - `A`–`Z`, `a`–`z`, `0`–`9`, `-` and `_` stay as they are;
//! - every other byte of the level's UTF-8 (`.`, `*`, `>`, `$`, `=`, space,
//!   `/` cannot occur, any non-ASCII byte, ...) becomes `=` and its two
//!   upper-case hex digits: `$SYS` is `=24SYS`;
//! - an empty level (`a//b`, `/a`) becomes a lone `=`, which no non-empty
//!   level gives (its `=` is always followed by two digits).
//!
//! So the tokens use only `[A-Za-z0-9_=-]`: valid in NATS subjects and in
//! key-value keys alike. In a filter, a `+` level is NATS's `*` and a `#`
//! level NATS's `>`; neither character can come from an escaped level.
//! Decoding takes only the canonical form, so the mapping is a bijection
//! between valid topic names and the subjects it gives (tested below on
//! random topics, with the matching of filters against topics).
//!
//! Two matching rules of MQTT are not NATS's, and the router keeps them
//! itself: `a/#` also matches `a` (it subscribes `a.>` and `a`), and a
//! wildcard at the first level does not match a `$` topic (it checks the
//! MQTT filter again on receipt).

use std::fmt::Write as _;

/// Whether `byte` stands for itself in a token.
fn plain(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
}

/// Appends the token of one topic level.
fn push_level(out: &mut String, level: &str) {
    if level.is_empty() {
        out.push('=');
        return;
    }
    for &byte in level.as_bytes() {
        if plain(byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "={byte:02X}");
        }
    }
}

/// The tokens of topic name `topic`, joined by `.` (no prefix).
pub fn topic_tokens(topic: &str) -> String {
    let mut out = String::with_capacity(topic.len() + 8);
    for (i, level) in topic.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        push_level(&mut out, level);
    }
    out
}

/// The NATS subject pattern of topic filter `filter` (no prefix): `+` is
/// `*`, `#` is `>`. (`a/#` also matches `a` in MQTT: see
/// [`filter_subjects`].)
pub fn filter_tokens(filter: &str) -> String {
    let mut out = String::with_capacity(filter.len() + 8);
    for (i, level) in filter.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match level {
            "+" => out.push('*'),
            "#" => out.push('>'),
            level => push_level(&mut out, level),
        }
    }
    out
}

/// The subjects under `prefix` a node subscribes for `filter`: its
/// pattern, and for a filter ending in `/#` also its parent (`a/#` matches
/// `a`). A lone `#` is one pattern (`>` matches every subject).
pub fn filter_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let mut subjects = vec![format!("{prefix}.{}", filter_tokens(filter))];
    if let Some(parent) = filter.strip_suffix("/#") {
        subjects.push(format!("{prefix}.{}", filter_tokens(parent)));
    }
    subjects
}

/// One token back to its level; `None` unless canonical.
fn decode_level(token: &str, out: &mut Vec<u8>) -> Option<()> {
    if token == "=" {
        return Some(());
    }
    let bytes = token.as_bytes();
    if bytes.is_empty() {
        return None;
    }
    let mut i = 0;
    while i < bytes.len() {
        let byte = bytes[i];
        if plain(byte) {
            out.push(byte);
            i += 1;
            continue;
        }
        if byte != b'=' {
            return None;
        }
        let hex = |b: u8| match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        };
        let value = hex(*bytes.get(i + 1)?)? << 4 | hex(*bytes.get(i + 2)?)?;
        if plain(value) {
            return None;
        }
        out.push(value);
        i += 3;
    }
    Some(())
}

/// The topic name of `tokens` (a subject without its prefix), if it is one
/// [`topic_tokens`] gives.
pub fn topic_of(tokens: &str) -> Option<String> {
    let mut out = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.split('.').enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        decode_level(token, &mut out)?;
    }
    let topic = String::from_utf8(out).ok()?;
    super::topic::valid_topic_name(&topic).then_some(topic)
}

/// A name (shared subscription group, shared application) as one token, for
/// a NATS queue group.
pub fn name_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    push_level(&mut out, name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::topic;

    /// A small deterministic generator (xorshift64*): the tests need no
    /// dependency and see the same cases on every run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Characters a level is made of: the plain ones, NATS's special ones,
    /// the escape character itself, and some multi-byte UTF-8.
    const ALPHABET: &[&str] = &[
        "a", "b", "Z", "0", "9", "-", "_", ".", "*", ">", "=", "$", " ", "\t", "%", "~", "é", "€",
        "😀", "=41", "\u{7f}", "\u{1}",
    ];

    fn level(rng: &mut Rng) -> String {
        let len = rng.below(5);
        (0..len)
            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
            .collect()
    }

    fn random_topic(rng: &mut Rng) -> String {
        let levels = 1 + rng.below(5);
        (0..levels)
            .map(|_| level(rng))
            .collect::<Vec<_>>()
            .join("/")
    }

    /// A filter made from `topic`: some levels replaced by `+`, and maybe
    /// its tail by `#`.
    fn random_filter(rng: &mut Rng, topic: &str) -> String {
        let mut levels: Vec<String> = topic
            .split('/')
            .map(|l| {
                if rng.below(3) == 0 {
                    "+".to_owned()
                } else if rng.below(4) == 0 {
                    level(rng)
                } else {
                    l.to_owned()
                }
            })
            .collect();
        if rng.below(3) == 0 {
            let keep = rng.below(levels.len() + 1);
            levels.truncate(keep);
            levels.push("#".to_owned());
        }
        levels.join("/")
    }

    /// NATS's own matching of a subject against a pattern.
    fn nats_matches(pattern: &str, subject: &str) -> bool {
        let p: Vec<&str> = pattern.split('.').collect();
        let s: Vec<&str> = subject.split('.').collect();
        for (i, token) in p.iter().enumerate() {
            match *token {
                ">" => return s.len() > i,
                "*" if i < s.len() => {}
                t if i < s.len() && t == s[i] => {}
                _ => return false,
            }
        }
        p.len() == s.len()
    }

    fn valid_subject(subject: &str) -> bool {
        subject.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_=-*>".contains(&b))
        })
    }

    #[test]
    fn the_mapping_is_a_bijection_on_valid_topics() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let topic = random_topic(&mut rng);
            if !topic::valid_topic_name(&topic) {
                continue;
            }
            let tokens = topic_tokens(&topic);
            assert!(valid_subject(&tokens), "{topic:?} gave {tokens:?}");
            assert!(!tokens.contains(['*', '>']), "{topic:?} gave {tokens:?}");
            assert_eq!(topic_of(&tokens).as_deref(), Some(&*topic), "{tokens:?}");
            if let Some(other) = seen.insert(tokens.clone(), topic.clone()) {
                assert_eq!(other, topic, "two topics gave {tokens:?}");
            }
        }
        assert!(
            seen.len() > 10_000,
            "too few distinct topics: {}",
            seen.len()
        );
    }

    #[test]
    fn only_canonical_tokens_decode() {
        for tokens in [
            "", "a..b", "=4", "=41", "=4g", "=zz", "a.=2e=", "*", "a.>", "=2a",
        ] {
            assert_eq!(topic_of(tokens), None, "{tokens:?}");
        }
        // An empty topic name is not one (MQTT-4.7.3-1).
        assert_eq!(topic_of("="), None);
        assert_eq!(topic_of("=.=").as_deref(), Some("/"));
        assert_eq!(topic_of("=24SYS.x").as_deref(), Some("$SYS/x"));
        assert_eq!(topic_of("=2E").as_deref(), Some("."));
        assert_eq!(topic_tokens("a.b/*/>/=/"), "a=2Eb.=2A.=3E.=3D.=");
        assert_eq!(filter_tokens("+/a/#"), "*.a.>");
        assert_eq!(
            filter_subjects("p", "a/#"),
            vec!["p.a.>".to_owned(), "p.a".to_owned()]
        );
        assert_eq!(filter_subjects("p", "#"), vec!["p.>".to_owned()]);
    }

    /// What a node receives for a filter (its subjects, NATS's matching,
    /// then MQTT's `$` rule checked again) is exactly what MQTT matches.
    #[test]
    fn filters_match_through_subjects_as_in_mqtt() {
        let mut rng = Rng(0xD1B5_4A32_D192_ED03);
        let (mut matched, mut checked) = (0, 0);
        for _ in 0..20_000 {
            let topic = random_topic(&mut rng);
            let source = if rng.below(2) == 0 {
                topic.clone()
            } else {
                random_topic(&mut rng)
            };
            let filter = random_filter(&mut rng, &source);
            if !topic::valid_topic_name(&topic) || !topic::valid_topic_filter(&filter) {
                continue;
            }
            let subject = format!("p.{}", topic_tokens(&topic));
            let hits = filter_subjects("p", &filter)
                .iter()
                .filter(|pattern| nats_matches(pattern, &subject))
                .count();
            assert!(hits <= 1, "{filter:?} reaches {topic:?} twice");
            let mqtt = topic::matches(&filter, &topic);
            if mqtt {
                assert_eq!(hits, 1, "{filter:?} matches {topic:?} in MQTT, not in NATS");
            } else if hits == 1 {
                // Only the `$` rule, which the router checks on receipt.
                let first = filter.split('/').next().unwrap_or("");
                assert!(
                    topic.starts_with('$') && (first == "+" || first == "#"),
                    "{filter:?} reaches {topic:?} in NATS, not in MQTT"
                );
            }
            checked += 1;
            matched += usize::from(mqtt);
        }
        assert!(
            checked > 10_000 && matched > 2_000,
            "{checked} checked, {matched} matched"
        );
    }
}
