//! Which paths need credentials: protected prefixes, minus public paths (exact, or a prefix
//! when written with a trailing `*`). Public wins.

#[derive(Debug, Default)]
pub struct PathRules {
    protected: Vec<String>,
    public_exact: Vec<String>,
    public_prefixes: Vec<String>,
}

impl PathRules {
    pub fn new(protected: Vec<String>, public: Vec<String>) -> Result<Self, String> {
        for (i, p) in protected.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(format!(
                    "config.protected_prefixes[{i}]: `{p}` must start with `/`"
                ));
            }
        }
        let mut rules = Self {
            protected,
            ..Self::default()
        };
        for (i, p) in public.into_iter().enumerate() {
            if !p.starts_with('/') {
                return Err(format!(
                    "config.public_paths[{i}]: `{p}` must start with `/`"
                ));
            }
            match p.strip_suffix('*') {
                Some(prefix) => rules.public_prefixes.push(prefix.to_string()),
                None => rules.public_exact.push(p),
            }
        }
        Ok(rules)
    }

    /// Whether a request for `path` (without its query) must carry valid credentials.
    pub fn needs_auth(&self, path: &str) -> bool {
        let public = self.public_exact.iter().any(|p| p == path)
            || self
                .public_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_str()));
        !public && self.protected.iter().any(|p| path.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_wins_over_protected() {
        let rules = PathRules::new(
            vec!["/api/".into()],
            vec!["/api/v1/categories".into(), "/api/public/*".into()],
        )
        .unwrap();
        assert!(rules.needs_auth("/api/v1/products"));
        assert!(!rules.needs_auth("/api/v1/categories"));
        assert!(rules.needs_auth("/api/v1/categories/polo"));
        assert!(!rules.needs_auth("/api/public/x"));
        assert!(!rules.needs_auth("/healthz"));
    }

    #[test]
    fn rejects_relative_paths() {
        assert!(PathRules::new(vec!["api".into()], vec![]).is_err());
        assert!(PathRules::new(vec!["/".into()], vec!["healthz".into()]).is_err());
    }
}
