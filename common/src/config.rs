//! Layered operator configuration: a base TOML file, an overlay per environment
//! (`name.toml` + `name.<env>.toml`), `${VAR}` / `${VAR:-default}` interpolation in string
//! values, and `VAR_FILE` for secrets mounted as files (Docker/Kubernetes secrets).
//!
//! Every error names the file, the key and the line: the merged tree is deserialised with its
//! key path tracked, and the path is looked up in the files, last overlay first. Settings
//! types should be `#[serde(default, deny_unknown_fields)]` so overlays can be partial and
//! typos are errors.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Deployment environment, chosen by `APP_ENV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Development,
    Staging,
    Production,
}

impl Environment {
    /// Reads `APP_ENV`; unset means production, so a forgotten variable fails safe.
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var("APP_ENV") {
            Err(_) => Ok(Self::Production),
            Ok(v) => v.parse().map_err(|e: String| ConfigError::single(e)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }
}

impl std::str::FromStr for Environment {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "staging" => Ok(Self::Staging),
            "production" | "prod" => Ok(Self::Production),
            other => Err(format!(
                "APP_ENV={other:?} is not one of development, staging, production"
            )),
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// All problems found in one pass, each already naming file/key/line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl ConfigError {
    pub fn single(msg: impl Into<String>) -> Self {
        Self(vec![msg.into()])
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, m) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// One source file and its text, kept to point errors at lines.
#[derive(Debug, Clone)]
struct Source {
    path: PathBuf,
    text: String,
}

/// The loaded settings plus what is needed to blame a key on a file and line later
/// (the `validate()` step of each service).
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub value: T,
    sources: Vec<Source>,
}

impl<T> Loaded<T> {
    /// The files the value was read from, base first.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.sources.iter().map(|s| s.path.as_path())
    }

    /// `file:line: key` for the last file that sets `key` (dotted path), else the base file.
    pub fn locate(&self, key: &str) -> String {
        let path: Vec<&str> = key.split('.').collect();
        for src in self.sources.iter().rev() {
            if let Some(line) = line_of(&src.text, &path) {
                return format!("{}:{line}: {key}", src.path.display());
            }
        }
        match self.sources.first() {
            Some(src) => format!("{}: {key}", src.path.display()),
            None => key.to_string(),
        }
    }
}

/// Validated settings of a service and the files they came from.
#[derive(Debug, Clone)]
pub struct Config<T> {
    pub env: Environment,
    pub settings: T,
    pub files: Vec<PathBuf>,
}

/// Loads `base` and its overlay for `env`, then lets `check` adjust the value (environment
/// overrides such as `PORT`) and report every remaining problem in one pass.
pub fn load_checked<T: DeserializeOwned>(
    base: &Path,
    env: Environment,
    check: impl FnOnce(&mut Loaded<T>, Environment) -> Vec<String>,
) -> Result<Config<T>, ConfigError> {
    let mut loaded: Loaded<T> = load(base, env)?;
    let errors = check(&mut loaded, env);
    if !errors.is_empty() {
        return Err(ConfigError(errors));
    }
    let files = loaded.sources.iter().map(|s| s.path.clone()).collect();
    Ok(Config {
        env,
        settings: loaded.value,
        files,
    })
}

/// The overlay that goes with `base` for `env`: `config/core-api.toml` →
/// `config/core-api.production.toml`.
pub fn overlay_path(base: &Path, env: Environment) -> PathBuf {
    let stem = base
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("config");
    base.with_file_name(format!("{stem}.{}.toml", env.as_str()))
}

/// Loads `base` and its overlay for `env` (if the overlay exists), interpolates variables and
/// deserialises into `T`.
pub fn load<T: DeserializeOwned>(base: &Path, env: Environment) -> Result<Loaded<T>, ConfigError> {
    let mut files = vec![base.to_path_buf()];
    let overlay = overlay_path(base, env);
    if overlay.exists() {
        files.push(overlay);
    }
    load_files(&files, &|name| std::env::var(name).ok())
}

/// Loads the given files in order (later ones override earlier ones) with `lookup` as the
/// environment. Exposed for tests.
pub fn load_files<T: DeserializeOwned>(
    files: &[PathBuf],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded<T>, ConfigError> {
    let mut errors: Vec<String> = Vec::new();
    let mut sources = Vec::new();
    let mut merged = toml::Table::new();
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{}: cannot read: {e}", path.display()));
                continue;
            }
        };
        match text.parse::<toml::Table>() {
            Ok(table) => merge(&mut merged, table),
            Err(e) => errors.push(format!("{}: {}", path.display(), one_line(&e.to_string()))),
        }
        sources.push(Source {
            path: path.clone(),
            text,
        });
    }
    if !errors.is_empty() {
        return Err(ConfigError(errors));
    }

    let mut value = toml::Value::Table(merged);
    let mut missing = Vec::new();
    interpolate_value(&mut value, &mut Vec::new(), lookup, &mut missing);
    let mut loaded = Loaded { value: (), sources };
    if !missing.is_empty() {
        return Err(ConfigError(
            missing
                .into_iter()
                .map(|(key, msg)| format!("{}: {msg}", loaded.locate(&key)))
                .collect(),
        ));
    }
    // Deserialise the merged, interpolated tree; the error path names the key, and the key
    // leads back to the file and line that set it.
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(value) => Ok(Loaded {
            value,
            sources: std::mem::take(&mut loaded.sources),
        }),
        Err(e) => {
            let path = e.path().to_string();
            let msg = e.into_inner().to_string();
            let key = match msg
                .strip_prefix("unknown field `")
                .and_then(|r| r.split('`').next())
            {
                Some(field) if path == "." || path.is_empty() => field.to_string(),
                Some(field) if !path.ends_with(field) => format!("{path}.{field}"),
                _ => path,
            };
            let msg = msg.lines().next().unwrap_or_default();
            Err(ConfigError::single(format!(
                "{}: {msg}",
                loaded.locate(&key)
            )))
        }
    }
}

/// Reads a secret-capable variable: `NAME`, or the contents of the file named by `NAME_FILE`
/// (trailing newline removed). Setting both is an error, as is an unreadable file.
pub fn env_or_file(
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, String> {
    let direct = lookup(name);
    let file_var = format!("{name}_FILE");
    let file = lookup(&file_var).filter(|f| !f.is_empty());
    match (direct, file) {
        (Some(_), Some(_)) => Err(format!("set only one of {name} and {file_var}")),
        (Some(v), None) => Ok(Some(v)),
        (None, Some(f)) => std::fs::read_to_string(&f)
            .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_string()))
            .map_err(|e| format!("{file_var}={f}: cannot read: {e}")),
        (None, None) => Ok(None),
    }
}

fn one_line(s: &str) -> String {
    // toml's errors are multi-line with a source excerpt; keep the location and the message.
    let lines: Vec<&str> = s
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    let head = lines.first().copied().unwrap_or_default();
    let msg = lines.last().copied().unwrap_or_default();
    if lines.len() > 1 {
        format!("{} — {}", head.trim(), msg.trim())
    } else {
        head.to_string()
    }
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn interpolate_value(
    value: &mut toml::Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(String, String)>,
) {
    match value {
        toml::Value::String(s) if s.contains('$') => match interpolate(s, lookup) {
            Ok(new) => *s = new,
            Err(msg) => errors.push((path.join("."), msg)),
        },
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                path.push(k.clone());
                interpolate_value(v, path, lookup, errors);
                path.pop();
            }
        }
        toml::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                path.push(i.to_string());
                interpolate_value(v, path, lookup, errors);
                path.pop();
            }
        }
        _ => {}
    }
}

/// Expands `${NAME}` (required), `${NAME:-default}` (optional) and `$$` (a literal `$`).
/// `NAME` may also come from `NAME_FILE`.
pub fn interpolate(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(format!("invalid variable name {name:?} in ${{{expr}}}"));
            }
            match env_or_file(name, lookup)? {
                Some(v) => out.push_str(&v),
                None => match default {
                    Some(d) => out.push_str(d),
                    None => {
                        return Err(format!(
                            "environment variable {name} is not set (nor {name}_FILE)"
                        ));
                    }
                },
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// 1-based line of the value at `path` in `text`, if the file sets it.
fn line_of(text: &str, path: &[&str]) -> Option<usize> {
    let doc = toml_edit::ImDocument::parse(text).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let mut span = None;
    for (depth, seg) in path.iter().enumerate() {
        let last = depth + 1 == path.len();
        let (key, item) = table.get_key_value(seg)?;
        span = key.span().or_else(|| item.span()).or(span);
        if last {
            break;
        }
        let next = path[depth + 1];
        if let Some(t) = item.as_table_like() {
            table = t;
        } else if let Some(aot) = item.as_array_of_tables() {
            // `[[routes]]` element `i`: keep descending into that table.
            let t = aot.get(next.parse().ok()?)?;
            span = t.span().or(span);
            if depth + 2 == path.len() {
                break;
            }
            return line_in_table(text, t, &path[depth + 2..], span);
        } else if let Some(array) = item.as_array() {
            let v = array.get(next.parse().ok()?)?;
            span = v.span().or(span);
            break;
        } else {
            break;
        }
    }
    span.map(|r| text[..r.start].matches('\n').count() + 1)
}

fn line_in_table(
    text: &str,
    table: &toml_edit::Table,
    rest: &[&str],
    fallback: Option<std::ops::Range<usize>>,
) -> Option<usize> {
    let sub = rest.first().and_then(|k| table.get_key_value(k));
    let span = match sub {
        Some((key, item)) => match (rest.get(1), item.as_array()) {
            (Some(i), Some(a)) => a
                .get(i.parse().ok()?)
                .and_then(|v| v.span())
                .or_else(|| key.span()),
            _ => key.span().or_else(|| item.span()),
        },
        None => None,
    }
    .or(fallback)?;
    Some(text[..span.start].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Settings {
        server: Server,
        db: Db,
    }
    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Server {
        port: u16,
        name: String,
    }
    #[derive(Debug, Deserialize, Default, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Db {
        url: String,
        pool: u32,
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        p
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gh-config-{tag}-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn overlay_overrides_base_and_variables_expand() {
        let d = tmpdir("overlay");
        let base = write(
            &d,
            "svc.toml",
            "[server]\nport = 1\nname = \"a\"\n[db]\nurl = \"${DB}\"\npool = 10\n",
        );
        let over = write(&d, "svc.staging.toml", "[server]\nport = 2\n");
        let got: Loaded<Settings> = load_files(&[base, over], &env(&[("DB", "postgres://x")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.value.server.port, 2);
        assert_eq!(got.value.server.name, "a");
        assert_eq!(got.value.db.url, "postgres://x");
        assert!(
            got.locate("server.port")
                .ends_with("svc.staging.toml:2: server.port")
        );
        assert!(got.locate("db.pool").ends_with("svc.toml:6: db.pool"));
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let d = tmpdir("unknown");
        let base = write(&d, "svc.toml", "[server]\nport = 1\n\n[db]\nurll = \"x\"\n");
        let err = load_files::<Settings>(&[base], &env(&[]))
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(
            err.contains("svc.toml:5: db.urll: unknown field `urll`"),
            "{err}"
        );
    }

    #[test]
    fn missing_variable_names_variable_key_file_and_line() {
        let d = tmpdir("missing");
        let base = write(&d, "svc.toml", "[db]\n\nurl = \"${DATABASE_URL}\"\n");
        let err = load_files::<Settings>(&[base], &env(&[]))
            .err()
            .map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("svc.toml:3: db.url"), "{err}");
        assert!(err.contains("DATABASE_URL is not set"), "{err}");
    }

    #[test]
    fn array_of_tables_keys_have_their_own_line() {
        let text = "[[r]]\nx = 1\n\n[[r]]\nx = 2\ny = [\"a\",\n  \"b\"]\n";
        assert_eq!(line_of(text, &["r", "0", "x"]), Some(2));
        assert_eq!(line_of(text, &["r", "1", "x"]), Some(5));
        assert_eq!(line_of(text, &["r", "1", "y", "1"]), Some(7));
        assert_eq!(line_of(text, &["r", "1"]), Some(4));
    }

    #[test]
    fn interpolation_forms() {
        let e = env(&[("A", "1"), ("EMPTY", "")]);
        assert_eq!(interpolate("x${A}y", &e).as_deref(), Ok("x1y"));
        assert_eq!(interpolate("${B:-dflt}", &e).as_deref(), Ok("dflt"));
        assert_eq!(interpolate("${EMPTY:-dflt}", &e).as_deref(), Ok(""));
        assert_eq!(interpolate("$$HOME", &e).as_deref(), Ok("$HOME"));
        assert_eq!(interpolate("cost $5", &e).as_deref(), Ok("cost $5"));
        assert!(interpolate("${A", &e).is_err());
        assert!(interpolate("${1A}", &e).is_err());
    }

    #[test]
    fn file_variables_are_read_and_conflicts_refused() {
        let d = tmpdir("file");
        let secret = write(&d, "secret", "s3cret\n");
        let secret = secret.display().to_string();
        let lookup = move |k: &str| (k == "TOKEN_FILE").then(|| secret.clone());
        assert_eq!(interpolate("${TOKEN}", &lookup).as_deref(), Ok("s3cret"));
        let both = |k: &str| matches!(k, "T" | "T_FILE").then(|| "x".to_string());
        assert!(env_or_file("T", &both).is_err());
    }
}
