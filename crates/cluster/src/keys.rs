//! The cluster's key layout in etcd: everything of one cluster lives under `/slipway/<cluster>/`, one key per
//! fact, so each part watches exactly what it needs (a host its own keys and the route table).

/// What a key under a cluster's root is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// `leader`: the control plane's leader key (`LeaderRecord`, under the leader's lease).
    Leader,
    /// `routes`: the route table every router serves (`RoutesRecord`).
    Routes,
    /// `hosts/<name>`: a joined host (`HostRecord`, under the host's lease: gone when its heartbeat stops).
    Host(String),
    /// `desired/<name>`: what the host's agent should run (`DesiredRecord`).
    Desired(String),
    /// `observed/<name>`: what the host runs and serves (`ObservedRecord`, under the host's lease).
    Observed(String),
}

/// Key names of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    root: String,
}

/// Whether `name` may name a cluster or a host: 1 to 63 of `a-z 0-9 - _ .`, not starting with `.` or `-`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

impl Layout {
    /// The layout of cluster `name` (see [`valid_name`]).
    pub fn new(name: &str) -> Result<Layout, String> {
        if !valid_name(name) {
            return Err(format!("cluster name {name:?}: use 1-63 of a-z, 0-9, '-', '_', '.'"));
        }
        Ok(Layout {
            root: format!("/slipway/{name}/"),
        })
    }

    /// The prefix of every key of this cluster.
    pub fn root(&self) -> &str {
        &self.root
    }

    pub fn leader(&self) -> String {
        format!("{}leader", self.root)
    }

    pub fn routes(&self) -> String {
        format!("{}routes", self.root)
    }

    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.root)
    }

    pub fn host(&self, name: &str) -> String {
        format!("{}hosts/{name}", self.root)
    }

    pub fn desired(&self, host: &str) -> String {
        format!("{}desired/{host}", self.root)
    }

    pub fn observed(&self, host: &str) -> String {
        format!("{}observed/{host}", self.root)
    }

    /// What `key` is, if it is one of this cluster's keys.
    pub fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.root)?;
        let named = |prefix: &str, make: fn(String) -> Key| {
            rest.strip_prefix(prefix)
                .filter(|n| valid_name(n))
                .map(|n| make(n.to_string()))
        };
        match rest {
            "leader" => Some(Key::Leader),
            "routes" => Some(Key::Routes),
            _ => named("hosts/", Key::Host)
                .or_else(|| named("desired/", Key::Desired))
                .or_else(|| named("observed/", Key::Observed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_to_what_it_names() {
        let l = Layout::new("prod").unwrap();
        assert_eq!(l.parse(&l.leader()), Some(Key::Leader));
        assert_eq!(l.parse(&l.routes()), Some(Key::Routes));
        assert_eq!(l.parse(&l.host("h1")), Some(Key::Host("h1".into())));
        assert_eq!(l.parse(&l.desired("h1")), Some(Key::Desired("h1".into())));
        assert_eq!(l.parse(&l.observed("h-2")), Some(Key::Observed("h-2".into())));
        assert_eq!(l.parse("/slipway/other/routes"), None);
        assert_eq!(l.parse(&format!("{}hosts/../x", l.root())), None);
        assert_eq!(l.parse(&format!("{}hosts/", l.root())), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(Layout::new("prod-1").is_ok());
        for bad in ["", "Prod", "a/b", ".x", "-x", &"x".repeat(64)] {
            assert!(Layout::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
