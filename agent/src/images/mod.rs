//! The local image store (being written). The types below are the contract with the runtime.

use std::path::PathBuf;

/// What the runtime needs from an image's OCI config (`config` object of the image config blob).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` strings.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
}

/// An image found in the store, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// Canonical reference, e.g. `docker.io/library/busybox:latest`.
    pub reference: String,
    /// Manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// Unpacked root filesystem: shared, read-only lower layer. Never write into it.
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}
