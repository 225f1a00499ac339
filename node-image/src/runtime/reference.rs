//! Image references (`busybox`, `docker.io/library/busybox:1.35`, `10.0.2.100:5000/x@sha256:…`)
//! and where to fetch them from.
//!
//! The grammar is Docker's: the first path component is a registry host when it contains a `.`
//! or a `:` or is `localhost`; otherwise the image lives on Docker Hub, where one-component
//! names get the `library/` prefix. The tag defaults to `latest`. Docker Hub's API host is
//! `registry-1.docker.io`.
//!
//! [`endpoints`] turns a reference into the ordered list of places to try: the mirrors
//! configured for its registry (`keel.registry-mirror=docker.io=http://10.0.2.100:5000`), then
//! the registry itself over HTTPS — or plain HTTP when it is listed as insecure.

use std::fmt;

pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: &'static str,
}

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `quay.io`, `10.0.2.100:5000`.
    pub registry: String,
    /// `library/busybox`.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>`.
    pub digest: Option<String>,
}

fn valid_repo_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl Reference {
    pub fn parse(input: &str) -> Result<Reference, ReferenceError> {
        let err = |reason| ReferenceError {
            reference: input.to_string(),
            reason,
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err("empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !valid_digest(d) {
                    return Err(err("the digest must be sha256:<64 hex digits>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                if !valid_tag(t) {
                    return Err(err("invalid tag"));
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let (registry, repo) = match name.split_once('/') {
            Some((first, remainder))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), remainder.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == DOCKER_HUB_API {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repo.contains('/') {
            format!("library/{repo}")
        } else {
            repo
        };
        if registry.is_empty() || !repository.split('/').all(valid_repo_component) {
            return Err(err(
                "invalid repository name (lower-case letters, digits, . _ - and /)",
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What the manifest is fetched by: the digest if there is one, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// `docker.io/library/busybox@sha256:…`, the form of a pod's `imageID`.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// One place to fetch an image from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `http://10.0.2.100:5000` or `https://registry-1.docker.io`, no trailing slash.
    pub base: String,
    pub mirror: bool,
}

/// Mirrors for the reference's registry first (in configuration order), then the registry.
pub fn endpoints(r: &Reference, mirrors: &[(String, String)], insecure: &[String]) -> Vec<Endpoint> {
    let mut out: Vec<Endpoint> = mirrors
        .iter()
        .filter(|(reg, _)| reg == &r.registry || (r.registry == DOCKER_HUB && reg == "index.docker.io"))
        .map(|(_, url)| {
            let url = url.trim_end_matches('/');
            let base = if url.contains("://") {
                url.to_string()
            } else if insecure.iter().any(|i| i == url) {
                format!("http://{url}")
            } else {
                format!("https://{url}")
            };
            Endpoint { base, mirror: true }
        })
        .collect();
    let host = if r.registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        r.registry.as_str()
    };
    let scheme = if insecure.iter().any(|i| i == &r.registry) {
        "http"
    } else {
        "https"
    };
    out.push(Endpoint {
        base: format!("{scheme}://{host}"),
        mirror: false,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        let r = p("busybox");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(p("busybox:1.35").to_string(), "docker.io/library/busybox:1.35");
        assert_eq!(
            p("docker.io/busybox:1.35").to_string(),
            "docker.io/library/busybox:1.35"
        );
        assert_eq!(
            p("index.docker.io/library/busybox").to_string(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(p("bitnami/redis:7").repository, "bitnami/redis");
    }

    #[test]
    fn registries_ports_and_digests() {
        let r = p("10.0.2.100:5000/keel/echo:latest");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("10.0.2.100:5000", "keel/echo")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = p(&format!("localhost/x@{d}"));
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), d);
        let r = p(&format!("quay.io/a/b:v1@{d}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_reference(), d);
        assert_eq!(r.with_digest(&d), format!("quay.io/a/b@{d}"));
    }

    #[test]
    fn bad_references_are_errors() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox@sha256:xyz",
            "a//b",
            "busybox:tag!",
            "x:  y",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn mirrors_come_first_then_the_registry() {
        let mirrors = vec![
            ("docker.io".to_string(), "http://10.0.2.100:5000".to_string()),
            ("quay.io".to_string(), "mirror.local:5000".to_string()),
        ];
        let insecure = vec!["mirror.local:5000".to_string(), "10.0.2.100:5001".to_string()];
        let e = endpoints(&p("busybox"), &mirrors, &insecure);
        assert_eq!(
            e,
            vec![
                Endpoint {
                    base: "http://10.0.2.100:5000".into(),
                    mirror: true
                },
                Endpoint {
                    base: "https://registry-1.docker.io".into(),
                    mirror: false
                },
            ]
        );
        let e = endpoints(&p("quay.io/a/b"), &mirrors, &insecure);
        assert_eq!(e[0].base, "http://mirror.local:5000");
        assert_eq!(e[1].base, "https://quay.io");
        let e = endpoints(&p("10.0.2.100:5001/a"), &mirrors, &insecure);
        assert_eq!(
            e,
            vec![Endpoint {
                base: "http://10.0.2.100:5001".into(),
                mirror: false
            }]
        );
    }
}
