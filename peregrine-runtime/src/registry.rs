//! The registry of backends: the built-in ones and the plugins in the search path, each a
//! [`RuntimeBackend`] used the same way.
//!
//! Linking a new backend crate in takes one line in [`builtin`].

use std::path::PathBuf;
use std::sync::Arc;

use backend_ckks::CkksScheme;
use backend_clear::ClearScheme;
use peregrine_backend::plugin::discover;
use peregrine_backend::Capabilities;
use serde::Serialize;

use crate::ckks::{Builtin, CkksBackend};
use crate::engine::RuntimeBackend;
use crate::error::{Result, RuntimeError};

/// The backends linked into this program.
pub fn builtin() -> Vec<Arc<dyn RuntimeBackend>> {
    vec![
        Arc::new(CkksBackend::new(Builtin::<CkksScheme>::new())),
        Arc::new(CkksBackend::new(Builtin::<ClearScheme>::new())),
        #[cfg(feature = "tfhe")]
        Arc::new(crate::tfhe::TfheBackend),
    ]
}

/// The plugin search path: `dirs` and `PEREGRINE_PLUGIN_PATH` (':'-separated); when neither
/// gives a directory, the directory of the running executable (where `cargo build` puts
/// plugins).
pub fn search_path(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("PEREGRINE_PLUGIN_PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    if dirs.is_empty() {
        dirs.extend(std::env::current_exe().ok().and_then(|e| e.parent().map(PathBuf::from)));
    }
    dirs
}

/// A backend as listed by `peregrine backends`.
#[derive(Clone, Debug, Serialize)]
pub struct BackendInfo {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Capabilities at the default parameters (CKKS-shaped backends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Result<Capabilities, String>>,
}

/// A plugin library found in the search path, or why it could not be loaded.
#[derive(Clone, Debug, Serialize)]
pub struct PluginEntry {
    /// The library.
    pub path: PathBuf,
    /// The backend it provides.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub backend: Option<BackendInfo>,
    /// Why it could not be loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A built-in backend in a [`Listing`].
#[derive(Clone, Debug, Serialize)]
pub struct BuiltinEntry {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Capabilities at the default parameters (CKKS-shaped backends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// Every backend available: built in and plugins (`peregrine backends --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// The built-in backends, with capabilities at their defaults where they have them.
    pub builtin: Vec<BuiltinEntry>,
    /// Where plugins were searched.
    pub search_path: Vec<PathBuf>,
    /// The libraries found there.
    pub plugins: Vec<PluginEntry>,
}

impl BackendInfo {
    fn of(b: &dyn RuntimeBackend) -> Self {
        BackendInfo {
            name: b.name().to_string(),
            description: b.description().to_string(),
            capabilities: b.default_capabilities().map(|r| r.map_err(|e| e.to_string())),
        }
    }
}

/// The built-in backends and the plugin search path.
pub struct Registry {
    builtin: Vec<Arc<dyn RuntimeBackend>>,
    search_path: Vec<PathBuf>,
}

impl Registry {
    /// The built-in backends, with plugins searched in [`search_path`]`(dirs)`.
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        Registry { builtin: builtin(), search_path: search_path(dirs) }
    }
    /// Where plugins are searched.
    pub fn search_path(&self) -> &[PathBuf] {
        &self.search_path
    }
    /// The built-in backends.
    pub fn builtin(&self) -> Vec<BackendInfo> {
        self.builtin.iter().map(|b| BackendInfo::of(b.as_ref())).collect()
    }
    /// Every plugin library in the search path, with what loading it gave.
    pub fn plugins(&self) -> Vec<PluginEntry> {
        discover(&self.search_path)
            .into_iter()
            .map(|(path, r)| match r {
                Ok(p) => PluginEntry { path, backend: Some(BackendInfo::of(&CkksBackend::new(p))), error: None },
                Err(e) => PluginEntry { path, backend: None, error: Some(e.to_string()) },
            })
            .collect()
    }
    /// The built-in backends and the plugins found.
    pub fn listing(&self) -> Listing {
        let builtin = self
            .builtin()
            .into_iter()
            .map(|b| BuiltinEntry {
                name: b.name,
                description: b.description,
                capabilities: b.capabilities.and_then(Result::ok),
            })
            .collect();
        Listing { builtin, search_path: self.search_path.clone(), plugins: self.plugins() }
    }
    /// The backend called `name`: a built-in one, else the first plugin of that name.
    pub fn resolve(&self, name: &str) -> Result<Arc<dyn RuntimeBackend>> {
        if let Some(b) = self.builtin.iter().find(|b| b.name() == name) {
            return Ok(b.clone());
        }
        for (_, r) in discover(&self.search_path) {
            if let Ok(p) = r {
                if p.name() == name {
                    return Ok(Arc::new(CkksBackend::new(p)));
                }
            }
        }
        Err(RuntimeError::UnknownBackend {
            name: name.to_string(),
            builtin: self.builtin.iter().map(|b| b.name().to_string()).collect(),
            search_path: self.search_path.clone(),
        })
    }
}
