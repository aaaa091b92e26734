//! `[workspaces.NAME]`: several SkyLight accounts served by one process
//! (SPEC §7), and how each one's settings are resolved.
//!
//! Owns: the table's schema, the resolution of one workspace's settings
//! (its flag, else its own key, else the shared `[api]`/`[engine]`/`[guard]`
//! default), the checks that only make sense with several workspaces, and
//! choosing one by name for the commands that take `--workspace`. Does not
//! own running them: `skyrules run` starts one engine per [`Workspace`].

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ApiConfig, Config, ConfigError, EngineConfig, GuardConfig, API_KEY_ENV};
use crate::api::ApiKey;

/// The name of the one workspace a config without `[workspaces.*]` tables
/// describes.
pub const DEFAULT_WORKSPACE: &str = "default";

/// One `[workspaces.NAME]` table: what that account overrides.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    /// SkyLight API base URL; else `api.base_url`.
    pub base_url: Option<String>,
    /// Environment variable holding this account's API key.
    pub api_key_env: Option<String>,
    /// File holding this account's API key.
    pub api_key_file: Option<PathBuf>,
    /// This account's rules; else `engine.rules_dir`.
    pub rules_dir: Option<PathBuf>,
    /// Time between polls; else `engine.poll_interval`.
    #[serde(default, deserialize_with = "optional_duration")]
    pub poll_interval: Option<Duration>,
    /// Log actions instead of taking them; else `engine.dry_run`.
    pub dry_run: Option<bool>,
    /// This account's request budget per minute; else
    /// `api.max_requests_per_minute`.
    pub max_requests_per_minute: Option<u64>,
    /// This account's reply-loop guard; else `[guard]`.
    pub guard: Option<GuardOverride>,
}

/// `[workspaces.NAME.guard]`: either key may be left to `[guard]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardOverride {
    /// Replies per session per window.
    pub max_replies: Option<u32>,
    /// The sliding window.
    #[serde(default, deserialize_with = "optional_duration")]
    pub window: Option<Duration>,
}

fn optional_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    super::duration(d).map(Some)
}

/// One workspace's settings, resolved: what its engine, client and
/// commands use.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// `default`, or the NAME of its table.
    pub name: String,
    /// Its API settings (`base_url` and the key file resolved).
    pub api: ApiConfig,
    /// The variable its key is read from when no key file is set.
    pub api_key_env: String,
    /// Its engine settings (`rules_dir`, `poll_interval`, `dry_run`
    /// resolved; the process-wide keys as in `[engine]`).
    pub engine: EngineConfig,
    /// Its reply-loop guard.
    pub guard: GuardConfig,
    /// Whether it is a `[workspaces.NAME]` table (else `default`, described
    /// by `[api]` and `[engine]`): where its keys are named in errors.
    own_table: bool,
    /// The config file, for errors.
    source: Option<PathBuf>,
}

impl Workspace {
    /// Where the setting `key` of `table` is for this workspace, for errors:
    /// `api.api_key_file`, or `workspaces.NAME.api_key_file`.
    fn key(&self, table: &str, key: &str) -> String {
        if self.own_table {
            format!("workspaces.{}.{key}", self.name)
        } else {
            format!("{table}.{key}")
        }
    }

    /// The API key: from the key file if set, else the key variable.
    pub(crate) fn api_key(&self) -> Result<ApiKey, ConfigError> {
        let file_key = self.key("api", "api_key_file");
        if let Some(file) = &self.api.api_key_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                ConfigError::Invalid(format!(
                    "cannot read the API key file {} (`{file_key}`): {e}",
                    file.display()
                ))
            })?;
            let key = ApiKey::new(text);
            if key.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "the API key file {} (`{file_key}`) is empty",
                    file.display()
                )));
            }
            return Ok(key);
        }
        let var = &self.api_key_env;
        match std::env::var(var) {
            Ok(k) if !k.trim().is_empty() => Ok(ApiKey::new(k)),
            _ if !self.own_table => Err(ConfigError::Invalid(format!(
                "no SkyLight API key: set {var}, or `api.api_key_file` in {}",
                self.source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| super::DEFAULT_CONFIG_FILE.to_string())
            ))),
            _ => Err(ConfigError::Invalid(format!(
                "workspace {}: no SkyLight API key: the variable {var} (`{}`) is not set",
                self.name,
                self.key("api", "api_key_env")
            ))),
        }
    }

    /// The key its rules directory is set with: `engine.rules_dir`, or
    /// `workspaces.NAME.rules_dir`.
    pub(crate) fn rules_dir_key(&self) -> String {
        self.key("engine", "rules_dir")
    }

    /// The client settings of this workspace.
    pub(crate) fn client_config(&self) -> Result<crate::api::ClientConfig, ConfigError> {
        let mut c = crate::api::ClientConfig::new(self.api.base_url.trim(), self.api_key()?);
        c.workspace = self.name.clone();
        if self.own_table {
            c.key_source = match &self.api.api_key_file {
                Some(f) => format!(
                    "workspace {}'s key file {} (`{}`)",
                    self.name,
                    f.display(),
                    self.key("api", "api_key_file")
                ),
                None => format!(
                    "workspace {}'s key variable {} (`{}`)",
                    self.name,
                    self.api_key_env,
                    self.key("api", "api_key_env")
                ),
            };
        }
        c.timeout = self.api.timeout;
        c.retry.max_attempts = self.api.max_attempts;
        c.max_requests_per_second = self.api.max_requests_per_second;
        c.max_requests_per_minute = self
            .api
            .max_requests_per_minute
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        c.urgent_reserve = crate::api::budget::urgent_reserve(self.engine.pending_interval);
        c.max_body = usize::try_from(self.api.max_body).unwrap_or(usize::MAX);
        Ok(c)
    }
}

impl Config {
    /// Every workspace, in name order: the `[workspaces.*]` tables, or the
    /// one `default` that `[api]` and `[engine]` describe.
    pub(crate) fn workspaces(&self) -> Vec<Workspace> {
        if self.workspaces.is_empty() {
            return vec![Workspace {
                name: DEFAULT_WORKSPACE.to_string(),
                api: self.api.clone(),
                api_key_env: API_KEY_ENV.to_string(),
                engine: self.engine.clone(),
                guard: self.guard.clone(),
                own_table: false,
                source: self.source.clone(),
            }];
        }
        self.workspaces
            .iter()
            .map(|(name, w)| self.resolve(name, w))
            .collect()
    }

    /// The workspaces' names, in order (as errors list them).
    pub(crate) fn workspace_names(&self) -> Vec<String> {
        if self.workspaces.is_empty() {
            vec![DEFAULT_WORKSPACE.to_string()]
        } else {
            self.workspaces.keys().cloned().collect()
        }
    }

    /// The workspace a command acts on: `name`, or the only one. An
    /// unknown name, or none when there are several, is an error listing
    /// the configured ones.
    pub(crate) fn workspace(&self, name: Option<&str>) -> Result<Workspace, ConfigError> {
        let mut all = self.workspaces();
        let names = || self.workspace_names().join(", ");
        match name {
            None if all.len() == 1 => Ok(all.remove(0)),
            None => Err(ConfigError::Invalid(format!(
                "this config has {} workspaces ({}); choose one with --workspace NAME",
                all.len(),
                names()
            ))),
            Some(n) => match all.iter().position(|w| w.name == n) {
                Some(i) => Ok(all.remove(i)),
                None => Err(ConfigError::Invalid(format!(
                    "no workspace named {n:?}; configured: {}",
                    names()
                ))),
            },
        }
    }

    fn resolve(&self, name: &str, w: &WorkspaceConfig) -> Workspace {
        let flags = &self.flags;
        let mut api = self.api.clone();
        if let (Some(u), false) = (&w.base_url, flags.base_url) {
            api.base_url = u.clone();
        }
        api.api_key_file = w.api_key_file.clone();
        if let Some(n) = w.max_requests_per_minute {
            api.max_requests_per_minute = Some(n);
        }
        let mut engine = self.engine.clone();
        if let (Some(d), false) = (&w.rules_dir, flags.rules_dir) {
            engine.rules_dir = d.clone();
        }
        if let (Some(p), false) = (w.poll_interval, flags.poll_interval) {
            engine.poll_interval = p;
        }
        if !flags.dry_run {
            engine.dry_run = w.dry_run.unwrap_or(engine.dry_run);
        }
        let mut guard = self.guard.clone();
        if let Some(g) = &w.guard {
            guard.max_replies = g.max_replies.unwrap_or(guard.max_replies);
            guard.window = g.window.unwrap_or(guard.window);
        }
        Workspace {
            name: name.to_string(),
            api,
            api_key_env: w.api_key_env.clone().unwrap_or_default(),
            engine,
            guard,
            own_table: true,
            source: self.source.clone(),
        }
    }

    /// The checks only `[workspaces.*]` tables need; `bad(key, why)` makes
    /// the error.
    pub(super) fn validate_workspaces(
        &self,
        bad: &dyn Fn(&str, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        if self.workspaces.is_empty() {
            return Ok(());
        }
        if self.api.api_key_file.is_some() {
            return Err(bad(
                "api.api_key_file",
                "with [workspaces.*] tables each workspace names its own key (api_key_env or api_key_file); move it into the workspace it belongs to",
            ));
        }
        let mut keys: Vec<(String, &str)> = Vec::new();
        for (name, w) in &self.workspaces {
            let key = |k: &str| format!("workspaces.{name}.{k}");
            if !valid_name(name) {
                return Err(bad(
                    &format!("workspaces.{name}"),
                    "a workspace name is lowercase letters, digits and '-', starting with a letter or digit",
                ));
            }
            if w.max_requests_per_minute == Some(0) {
                return Err(bad(
                    &key("max_requests_per_minute"),
                    "must be at least 1 (leave it out for the shared budget, or none)",
                ));
            }
            let source = match (&w.api_key_env, &w.api_key_file) {
                (Some(_), Some(_)) => {
                    return Err(bad(
                        &key("api_key_env"),
                        "give api_key_env or api_key_file, not both",
                    ))
                }
                (None, None) => {
                    return Err(bad(
                        &format!("workspaces.{name}"),
                        "needs its API key: api_key_env (a variable's name) or api_key_file",
                    ))
                }
                (Some(v), None) if v.trim().is_empty() => {
                    return Err(bad(
                        &key("api_key_env"),
                        "is empty; name the variable holding the key",
                    ))
                }
                (Some(v), None) => format!("variable {v}"),
                (None, Some(f)) => format!("file {}", f.display()),
            };
            // Two accounts read from one key are one account twice: every
            // chat would be acted on by both rule sets.
            if let Some((_, other)) = keys.iter().find(|(s, _)| *s == source) {
                return Err(bad(
                    &key("api_key_env"),
                    &format!("uses the same API key ({source}) as workspace {other}; each workspace is one SkyLight account with its own key"),
                ));
            }
            keys.push((source, name));
            let ws = self.resolve(name, w);
            super::check_url(&ws.api.base_url, &key("base_url"), bad)?;
            super::check_timing(
                ws.engine.poll_interval,
                ws.guard.window,
                (&key("poll_interval"), &key("guard.window")),
                bad,
            )?;
        }
        Ok(())
    }
}

/// `[a-z0-9][a-z0-9-]*` (SPEC §7): safe in a log field, a metric label, a
/// URL and a database key alike.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::parse;
    use crate::config::Overrides;

    const TWO: &str = r#"
[api]
base_url = "http://shared.example/api/v1"
[engine]
poll_interval = "5s"
[guard]
max_replies = 3
[workspaces.acme]
api_key_env = "ACME_KEY"
rules_dir = "rules/acme"
[workspaces.globex]
base_url = "http://globex.example/api/v1"
api_key_file = "/run/secrets/globex"
rules_dir = "rules/globex"
poll_interval = "2s"
dry_run = true
[workspaces.globex.guard]
window = "1m"
"#;

    #[test]
    fn the_shipped_workspaces_example_loads() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/workspaces.toml");
        let c = Config::load(Some(&p), &Overrides::default()).unwrap();
        assert_eq!(c.workspace_names(), ["acme", "globex"]);
        let globex = c.workspace(Some("globex")).unwrap();
        assert_eq!(globex.guard.max_replies, 3);
        assert_eq!(globex.engine.poll_interval, Duration::from_secs(2));
    }

    #[test]
    fn a_config_without_workspaces_is_one_named_default() {
        let c = parse("[engine]\nrules_dir = \"r\"\n").unwrap();
        let all = c.workspaces();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].name, "default");
        assert_eq!(all[0].engine.rules_dir, PathBuf::from("r"));
        assert_eq!(all[0].api_key_env, "SKYLIGHT_API_KEY");
        assert_eq!(c.workspace(None).unwrap().name, "default");
    }

    #[test]
    fn workspace_keys_beat_the_shared_defaults() {
        let c = parse(TWO).unwrap();
        let acme = c.workspace(Some("acme")).unwrap();
        assert_eq!(acme.api.base_url, "http://shared.example/api/v1");
        assert_eq!(acme.api_key_env, "ACME_KEY");
        assert_eq!(acme.engine.poll_interval, Duration::from_secs(5));
        assert_eq!(acme.guard.max_replies, 3);
        assert!(!acme.engine.dry_run);
        let globex = c.workspace(Some("globex")).unwrap();
        assert_eq!(globex.api.base_url, "http://globex.example/api/v1");
        assert_eq!(globex.engine.poll_interval, Duration::from_secs(2));
        assert_eq!(globex.engine.rules_dir, PathBuf::from("rules/globex"));
        assert!(globex.engine.dry_run);
        assert_eq!(globex.guard.max_replies, 3);
        assert_eq!(globex.guard.window, Duration::from_secs(60));
    }

    #[test]
    fn flags_beat_a_workspace_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("skyrules.toml");
        std::fs::write(&p, TWO).unwrap();
        let o = Overrides {
            poll_interval: Some("1s".into()),
            dry_run: true,
            ..Overrides::default()
        };
        let c = Config::load(Some(&p), &o).unwrap();
        for w in c.workspaces() {
            assert_eq!(w.engine.poll_interval, Duration::from_secs(1), "{}", w.name);
            assert!(w.engine.dry_run, "{}", w.name);
        }
    }

    #[test]
    fn choosing_a_workspace_names_the_configured_ones() {
        let c = parse(TWO).unwrap();
        let e = c.workspace(None).unwrap_err().to_string();
        assert!(
            e.contains("--workspace") && e.contains("acme, globex"),
            "{e}"
        );
        let e = c.workspace(Some("initech")).unwrap_err().to_string();
        assert!(
            e.contains("\"initech\"") && e.contains("acme, globex"),
            "{e}"
        );
    }

    #[test]
    fn mixes_that_cannot_be_meant_are_errors_naming_the_key() {
        let cases = [
            (
                "[api]\napi_key_file = \"k\"\n[workspaces.a]\napi_key_env = \"A\"\n",
                "api.api_key_file",
            ),
            ("[workspaces.a]\nrules_dir = \"r\"\n", "workspaces.a"),
            (
                "[workspaces.a]\napi_key_env = \"A\"\napi_key_file = \"k\"\n",
                "workspaces.a.api_key_env",
            ),
            (
                "[workspaces.a]\napi_key_env = \"K\"\n[workspaces.b]\napi_key_env = \"K\"\n",
                "workspaces.b.api_key_env",
            ),
            (
                "[workspaces.Acme]\napi_key_env = \"A\"\n",
                "workspaces.Acme",
            ),
            (
                "[workspaces.a]\napi_key_env = \"A\"\nbase_url = \"ftp://x\"\n",
                "workspaces.a.base_url",
            ),
            (
                "[workspaces.a]\napi_key_env = \"A\"\npoll_interval = \"1ms\"\n",
                "workspaces.a.poll_interval",
            ),
            (
                "[workspaces.a]\napi_key_env = \"A\"\nstate_path = \"x.db\"\n",
                "workspaces.a.state_path",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn a_missing_key_variable_names_the_workspace() {
        let c =
            parse("[workspaces.acme]\napi_key_env = \"SKYRULES_TEST_NO_SUCH_VARIABLE\"\n").unwrap();
        let e = c
            .workspace(Some("acme"))
            .unwrap()
            .api_key()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("workspace acme") && e.contains("SKYRULES_TEST_NO_SUCH_VARIABLE"),
            "{e}"
        );
    }
}
