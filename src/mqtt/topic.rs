//! Topic names, topic filters and the subscription tree.
//!
//! Matching follows MQTT 5 §4.7: `+` matches one level, `#` the rest
//! (including the parent level), and topics starting with `$` are not
//! matched by a filter whose first level is a wildcard.

use std::collections::HashMap;

/// Whether `topic` may be published to: not empty, no wildcards, no NUL.
pub fn valid_topic_name(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// Whether `filter` is a well-formed topic filter.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        match level {
            "#" if !last => return false,
            "#" | "+" => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// A subscription filter as the client wrote it: plain, or a shared
/// subscription `$share/{group}/{filter}` (MQTT 5 §4.8.2, also taken from
/// MQTT 3.1.1 clients as Mosquitto, EMQX and HiveMQ take it).
#[derive(Debug, PartialEq, Eq)]
pub enum Share<'a> {
    /// Not a shared subscription.
    No,
    /// `$share/{group}/{filter}`.
    Group { group: &'a str, filter: &'a str },
    /// Starts with `$share/` but has no group, a group with a wildcard, or
    /// no filter after it.
    Invalid,
}

impl<'a> Share<'a> {
    pub fn parse(filter: &'a str) -> Share<'a> {
        let Some(rest) = filter.strip_prefix("$share/") else {
            return Share::No;
        };
        match rest.split_once('/') {
            Some((group, filter))
                if !group.is_empty()
                    && !group.contains(['+', '#'])
                    && valid_topic_filter(filter) =>
            {
                Share::Group { group, filter }
            }
            _ => Share::Invalid,
        }
    }
}

/// Whether `filter` matches `topic` (both assumed valid).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Subscriptions by filter, for finding every subscription that matches a
/// topic without looking at the others. `K` identifies a subscriber, `V` is
/// what it asked for.
pub struct SubscriptionTree<K, V> {
    root: Node<K, V>,
    len: usize,
}

struct Node<K, V> {
    children: HashMap<Box<str>, Node<K, V>>,
    /// Subscribers whose filter ends at this node.
    here: HashMap<K, V>,
    /// Subscribers whose filter ends with `#` right below this node.
    rest: HashMap<K, V>,
}

impl<K, V> Default for Node<K, V> {
    fn default() -> Self {
        Node {
            children: HashMap::new(),
            here: HashMap::new(),
            rest: HashMap::new(),
        }
    }
}

impl<K, V> Node<K, V> {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.here.is_empty() && self.rest.is_empty()
    }
}

impl<K: Eq + std::hash::Hash + Clone, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + std::hash::Hash + Clone, V> SubscriptionTree<K, V> {
    pub fn new() -> Self {
        SubscriptionTree {
            root: Node::default(),
            len: 0,
        }
    }

    /// Number of (subscriber, filter) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds or replaces the subscription of `key` to `filter`; returns the
    /// one it replaced.
    pub fn insert(&mut self, filter: &str, key: K, value: V) -> Option<V> {
        let mut node = &mut self.root;
        let mut levels = filter.split('/').peekable();
        let mut map = None;
        while let Some(level) = levels.next() {
            if level == "#" {
                map = Some(&mut node.rest);
                break;
            }
            node = node.children.entry(level.into()).or_default();
            if levels.peek().is_none() {
                map = Some(&mut node.here);
            }
        }
        let old = map.expect("a filter has a level").insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes the subscription of `key` to `filter`.
    pub fn remove(&mut self, filter: &str, key: &K) -> Option<V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let removed = remove_at(&mut self.root, &levels, key);
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The subscriptions to exactly `filter`, by subscriber.
    pub fn at(&self, filter: &str) -> Option<&HashMap<K, V>> {
        let mut node = &self.root;
        let mut levels = filter.split('/').peekable();
        while let Some(level) = levels.next() {
            if level == "#" {
                return Some(&node.rest);
            }
            node = node.children.get(level)?;
            if levels.peek().is_none() {
                return Some(&node.here);
            }
        }
        None
    }

    /// Calls `found` for every subscription matching `topic`.
    pub fn for_each_match(&self, topic: &str, mut found: impl FnMut(&K, &V)) {
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        visit(&self.root, &levels, 0, dollar, &mut found);
    }
}

fn remove_at<K: Eq + std::hash::Hash, V>(
    node: &mut Node<K, V>,
    levels: &[&str],
    key: &K,
) -> Option<V> {
    match levels {
        [] => None,
        ["#"] => node.rest.remove(key),
        [level, rest @ ..] => {
            let child = node.children.get_mut(*level)?;
            let removed = if rest.is_empty() {
                child.here.remove(key)
            } else {
                remove_at(child, rest, key)
            };
            if child.is_empty() {
                node.children.remove(*level);
            }
            removed
        }
    }
}

fn visit<K, V>(
    node: &Node<K, V>,
    levels: &[&str],
    depth: usize,
    dollar: bool,
    found: &mut impl FnMut(&K, &V),
) {
    // A `#` here matches this level and everything below (`a/#` matches
    // `a`), except a `$` topic's first level.
    if !(dollar && depth == 0) {
        for (k, v) in &node.rest {
            found(k, v);
        }
    }
    let Some((level, below)) = levels.split_first() else {
        for (k, v) in &node.here {
            found(k, v);
        }
        return;
    };
    if let Some(child) = node.children.get(*level) {
        visit_child(child, below, depth, dollar, found);
    }
    if !(dollar && depth == 0)
        && *level != "+"
        && let Some(child) = node.children.get("+")
    {
        visit_child(child, below, depth, dollar, found);
    }
}

/// A child that matched this level: the topic ends there (its own and its
/// `#` subscribers match) or goes on below it.
fn visit_child<K, V>(
    child: &Node<K, V>,
    below: &[&str],
    depth: usize,
    dollar: bool,
    found: &mut impl FnMut(&K, &V),
) {
    if below.is_empty() {
        for (k, v) in child.here.iter().chain(&child.rest) {
            found(k, v);
        }
    } else {
        visit(child, below, depth + 1, dollar, found);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_subscriptions() {
        use super::Share;
        let table = [
            (
                "$share/g/a/+",
                Share::Group {
                    group: "g",
                    filter: "a/+",
                },
            ),
            (
                "$share/g/#",
                Share::Group {
                    group: "g",
                    filter: "#",
                },
            ),
            ("a/$share/g/b", Share::No),
            ("$shared/g/b", Share::No),
            ("$share//a", Share::Invalid),
            ("$share/g", Share::Invalid),
            ("$share/g/", Share::Invalid),
            ("$share/+/a", Share::Invalid),
            ("$share/g#/a", Share::Invalid),
            ("$share/g/a/#/b", Share::Invalid),
        ];
        for (filter, want) in table {
            assert_eq!(Share::parse(filter), want, "{filter}");
        }
    }

    use super::*;

    #[test]
    fn filters_are_checked_level_by_level() {
        for ok in ["a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "$SYS/#"] {
            assert!(valid_topic_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a+", "a/b#", "#/a", "a\0b"] {
            assert!(!valid_topic_filter(bad), "{bad}");
        }
        assert!(valid_topic_name("a/b"));
        assert!(!valid_topic_name("a/+"));
        assert!(!valid_topic_name(""));
    }

    #[test]
    fn matching_follows_the_specification() {
        let cases = [
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "a/b", true),
            ("+/+", "/x", true),
            ("+", "/x", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/+/c", "a//c", true),
        ];
        for (filter, topic, want) in cases {
            assert_eq!(matches(filter, topic), want, "{filter} vs {topic}");
        }
    }

    #[test]
    fn the_tree_agrees_with_matches() {
        let filters = [
            "a/b", "a/+", "a/#", "#", "+/+", "+", "+/b", "a/b/c", "a/+/c", "$SYS/#", "$SYS/+", "/",
            "+/#", "a/b/#",
        ];
        let topics = [
            "a", "a/b", "a/b/c", "a/x/c", "b", "/", "/b", "$SYS/x", "$SYS", "a//c", "x/b",
        ];
        let mut tree = SubscriptionTree::new();
        for (i, f) in filters.iter().enumerate() {
            tree.insert(f, i, ());
        }
        assert_eq!(tree.len(), filters.len());
        for topic in topics {
            let mut got = Vec::new();
            tree.for_each_match(topic, |k, _| got.push(*k));
            got.sort();
            let want: Vec<usize> = (0..filters.len())
                .filter(|i| matches(filters[*i], topic))
                .collect();
            assert_eq!(got, want, "topic {topic}");
        }
        for (i, f) in filters.iter().enumerate() {
            assert!(tree.remove(f, &i).is_some(), "{f}");
        }
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
    }
}
