//! Which checkpoints a client may name: configured models, and directories under the model roots.
//!
//! `POST /engines` takes a configured model's name, a checkpoint directory, or a hub id. A
//! directory is admitted only when, with symlinks resolved, it lies under one of the model
//! roots (`[server] model_roots`; by default the configured models' directories and the
//! Hugging Face cache). A path outside the roots is refused (403) before anything is opened,
//! and the refusal reads the same whether or not the path exists. Paths in replies are
//! written relative to their root, so no reply discloses where the server keeps things.

use std::path::{Component, Path, PathBuf};

use actix_web::http::StatusCode;

use super::error::ApiError;
use crate::config::Config;
use crate::load::shorten;
use crate::load::{cached_snapshot, hub_cache_dirs, is_hub_id};

/// The canonical directories clients may load checkpoints from.
#[derive(Clone, Debug, Default)]
pub struct ModelRoots {
    roots: Vec<PathBuf>,
}

impl ModelRoots {
    /// The configured `model_roots`, or by default every configured model's directory and
    /// the Hugging Face cache. Roots that do not exist are left out.
    pub fn from_config(config: &Config) -> Self {
        let listed: Vec<PathBuf> = if config.server.model_roots.is_empty() {
            let models = config
                .models
                .iter()
                .filter(|m| m.path.is_some())
                .map(|m| PathBuf::from(&m.resolved));
            models.chain(hub_cache_dirs()).collect()
        } else {
            config.server.model_roots.clone()
        };
        let mut roots: Vec<PathBuf> = listed
            .iter()
            .filter_map(|p| p.canonicalize().ok())
            .filter(|p| p.is_dir())
            .collect();
        roots.sort();
        roots.dedup();
        Self { roots }
    }

    fn inside(&self, path: &Path) -> bool {
        self.roots.iter().any(|root| path.starts_with(root))
    }

    /// The canonical checkpoint directory a client's `model` (a path or a hub id) stands for.
    /// 403 when it is not under a root, 404 when it is but holds nothing.
    pub fn admit(&self, model: &str) -> Result<PathBuf, ApiError> {
        if model.is_empty() || model.contains('\0') || model.len() > 4096 {
            return Err(ApiError::bad_request(
                "`model` must be a model name, a checkpoint directory or a hub id",
            ));
        }
        let lexical = lexical_absolute(Path::new(model));
        if let Some(path) = lexical.as_deref().filter(|p| self.inside(p)) {
            return match self.resolve_inside(path) {
                Ok(dir) => Ok(dir),
                Err(error) if error.status == StatusCode::NOT_FOUND && is_hub_id(model) => {
                    self.hub_snapshot(model)
                }
                Err(error) => Err(error),
            };
        }
        if is_hub_id(model) {
            return self.hub_snapshot(model);
        }
        Err(outside_roots(model))
    }

    /// Resolves a path that is lexically under a root, refusing symlinks that lead out.
    fn resolve_inside(&self, path: &Path) -> Result<PathBuf, ApiError> {
        match path.canonicalize() {
            Ok(real) if !self.inside(&real) => Err(outside_roots(&self.relative(path))),
            Ok(real) if real.is_dir() => Ok(real),
            Ok(_) => Err(not_a_checkpoint(&self.relative(path))),
            Err(_) => {
                // A dangling symlink, or one whose target we cannot prove to be inside: say
                // the same as for any path outside.
                let is_link = path.symlink_metadata().is_ok_and(|m| m.is_symlink());
                let escaping_parent = path
                    .ancestors()
                    .skip(1)
                    .find_map(|a| a.canonicalize().ok())
                    .is_some_and(|real| !self.inside(&real));
                if is_link || escaping_parent {
                    Err(outside_roots(&self.relative(path)))
                } else {
                    Err(not_a_checkpoint(&self.relative(path)))
                }
            }
        }
    }

    /// A hub id's snapshot in the local cache, if the cache is under a root.
    fn hub_snapshot(&self, id: &str) -> Result<PathBuf, ApiError> {
        let repo = format!("models--{}", id.replace('/', "--"));
        let snapshot = hub_cache_dirs()
            .iter()
            .filter_map(|cache| cached_snapshot(&cache.join(&repo)))
            .find_map(|dir| dir.canonicalize().ok().filter(|d| self.inside(d)));
        snapshot.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_found",
                format!(
                    "`{}` is not a configured model, and no checkpoint by that name is under \
                     a model root or in the local Hugging Face cache",
                    shorten(id)
                ),
            )
        })
    }

    /// `path` written relative to the root it is under (as given when under none).
    pub fn relative(&self, path: &Path) -> String {
        self.roots
            .iter()
            .filter_map(|root| path.strip_prefix(root).ok().map(|rel| (root, rel)))
            .max_by_key(|(root, _)| root.as_os_str().len())
            .map(|(root, rel)| {
                let name = root.file_name().unwrap_or_default().to_string_lossy();
                if rel.as_os_str().is_empty() {
                    name.into_owned()
                } else {
                    format!("{name}/{}", rel.display())
                }
            })
            .unwrap_or_else(|| path.display().to_string())
    }

    /// `text` with every absolute root written as its last component, for replies.
    pub fn redact(&self, text: &str) -> String {
        let mut longest_first: Vec<&PathBuf> = self.roots.iter().collect();
        longest_first.sort_by_key(|r| std::cmp::Reverse(r.as_os_str().len()));
        let mut out = text.to_owned();
        for root in longest_first {
            let name = root.file_name().unwrap_or_default().to_string_lossy();
            out = out.replace(&root.display().to_string(), &name);
        }
        if let Some(home) = std::env::var_os("HOME").filter(|h| h.len() > 1) {
            out = out.replace(&*home.to_string_lossy(), "~");
        }
        out
    }
}

fn outside_roots(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "model_not_allowed",
        format!(
            "`{}` is not a configured model and not under a model root (see [server] \
             model_roots)",
            shorten(model)
        ),
    )
}

fn not_a_checkpoint(model: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "model_not_found",
        format!("no checkpoint directory at `{}`", shorten(model)),
    )
}

/// `path` made absolute against the working directory, with `.` and `..` folded lexically
/// (no file system access).
fn lexical_absolute(path: &Path) -> Option<PathBuf> {
    let base = if path.is_absolute() {
        PathBuf::from("/")
    } else {
        std::env::current_dir().ok()?
    };
    let mut out = base;
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_paths_fold_dot_dot_without_touching_the_disk() {
        assert_eq!(
            lexical_absolute(Path::new("/a/b/../c/./d")).unwrap(),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(
            lexical_absolute(Path::new("/../../etc")).unwrap(),
            PathBuf::from("/etc")
        );
    }

    #[test]
    fn hub_ids_are_owner_slash_name() {
        assert!(is_hub_id("facebook/opt-125m"));
        assert!(is_hub_id("meta-llama/Llama-3.2-1B"));
        assert!(!is_hub_id("/etc/passwd"));
        assert!(!is_hub_id("../x"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("a/.."));
        assert!(!is_hub_id("facebook"));
    }
}
