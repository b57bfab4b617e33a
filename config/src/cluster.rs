//! `[cluster]`: several edges sharing one slot state through etcd.

use crate::validate::Violation;

/// `[cluster]`: where the shared slot state lives and who this instance is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client endpoints, `http://host:port`.
    pub etcd: Vec<String>,
    /// Key prefix; every instance with the same prefix shares one slot state.
    pub prefix: String,
    /// This instance's name among the live instances (default: the host name).
    pub name: String,
}

pub(crate) mod file {
    use serde::Deserialize;
    use toml::Spanned;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct Cluster {
        pub(crate) etcd: Spanned<Vec<Spanned<String>>>,
        pub(crate) prefix: Spanned<String>,
        pub(crate) name: Option<Spanned<String>>,
    }
}

pub(crate) fn cluster(f: file::Cluster) -> Result<ClusterConfig, Violation> {
    let bad = |span, message: String| Err(Violation { span, message });
    if f.etcd.get_ref().is_empty() {
        return bad(
            f.etcd.span(),
            "cluster.etcd: at least one endpoint, such as \"http://127.0.0.1:2379\"".into(),
        );
    }
    let mut etcd = Vec::new();
    for e in f.etcd.into_inner() {
        let rest = e.get_ref().strip_prefix("http://");
        let host_port = rest.map(|r| r.trim_end_matches('/'));
        match host_port {
            Some(hp)
                if hp
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                etcd.push(format!("http://{hp}"))
            }
            _ => {
                return bad(
                    e.span(),
                    format!(
                        "cluster.etcd: {:?} is not an endpoint such as \"http://127.0.0.1:2379\"",
                        e.get_ref()
                    ),
                )
            }
        }
    }
    let prefix = f.prefix.get_ref().trim_end_matches('/').to_string();
    if !prefix.starts_with('/') || prefix.len() < 2 {
        return bad(
            f.prefix.span(),
            "cluster.prefix: a key path such as \"/bascule/prod\"".into(),
        );
    }
    let name = match f.name {
        Some(n) if n.get_ref().is_empty() || n.get_ref().contains('/') => {
            return bad(
                n.span(),
                "cluster.name: a non-empty name without '/'".into(),
            )
        }
        Some(n) => n.into_inner(),
        None => host_name(),
    };
    Ok(ClusterConfig { etcd, prefix, name })
}

/// The kernel's host name, as `hostname` prints it.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .unwrap_or_else(|| "bascule".into())
}

#[cfg(test)]
mod tests {
    use crate::parse;
    use crate::tests::located;

    #[test]
    fn values_and_default_name() {
        assert!(parse("", "t.toml").unwrap().cluster.is_none());
        let c = parse(
            "[cluster]\netcd = [\"http://127.0.0.1:2379/\", \"http://10.0.0.2:2379\"]\nprefix = \"/bascule/prod/\"\nname = \"edge-1\"\n",
            "t.toml",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.etcd, ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]);
        assert_eq!(
            (c.prefix.as_str(), c.name.as_str()),
            ("/bascule/prod", "edge-1")
        );
        let c = parse(
            "[cluster]\netcd = [\"http://e:2379\"]\nprefix = \"/b\"\n",
            "t.toml",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert!(!c.name.is_empty());
    }

    #[test]
    fn bad_values_are_located() {
        let (line, msg) = located("[cluster]\nprefix = \"/b\"\netcd = []\n");
        assert_eq!(line, 3);
        assert!(msg.starts_with("cluster.etcd:"), "{msg}");
        let (line, msg) = located("[cluster]\nprefix = \"/b\"\netcd = [\n  \"e:2379\",\n]\n");
        assert_eq!(line, 4);
        assert!(msg.contains("\"e:2379\""), "{msg}");
        let (line, msg) = located("[cluster]\netcd = [\"http://e:2379\"]\n\nprefix = \"b\"\n");
        assert_eq!(line, 4);
        assert!(msg.starts_with("cluster.prefix:"), "{msg}");
        let (line, msg) =
            located("[cluster]\netcd = [\"http://e:2379\"]\nprefix = \"/b\"\nname = \"a/b\"\n");
        assert_eq!(line, 4);
        assert!(msg.starts_with("cluster.name:"), "{msg}");
        let (_, msg) = located("[cluster]\netcd = [\"http://e:2379\"]\n");
        assert!(msg.contains("prefix"), "{msg}");
        let (_, msg) =
            located("[cluster]\netcd = [\"http://e:2379\"]\nprefix = \"/b\"\nlease = 1\n");
        assert!(msg.contains("lease"), "{msg}");
    }
}
