//! The local image store: skiff's ECR on the device.
//!
//! # Layout
//! - [`reference`]: [`ImageRef`], image references parsed and normalised as Docker does.
//! - [`digest`]: [`Digest`], `sha256:<hex>` content digests.
//! - [`oci`]: the OCI (and Docker schema 2) documents the store reads, media types, platforms.
//! - [`blobs`]: [`BlobStore`], content-addressed blobs, verified on their way in. The registry
//!   puller (a later module here) writes blobs through [`BlobStore::write_verified`] and names
//!   images through the same refs.json update as import.
//! - [`registry`]: [`RegistryClient`], the distribution API over HTTP(S) with basic, token and
//!   bearer-flow auth; [`RegistryConfig`] is a `[[registries]]` entry of the agent config.
//! - [`pull`]: [`ImageStore::pull`], resumable, digest-verified pulls; [`PullPolicy`].
//! - [`store`]: [`ImageStore`]: refs.json, resolve (with lazy, crash-safe rootfs unpacking),
//!   list, remove, catalog.
//! - [`import`]: OCI image layout import (`skiff image import`).
//! - [`unpack`]: applying layer tars to a rootfs: whiteouts, links, nothing escapes.
//!
//! The types below are the contract with the runtime.

use std::path::PathBuf;

pub mod blobs;
pub mod digest;
pub mod export;
mod fsutil;
pub mod gc;
pub mod import;
pub mod oci;
pub mod progress;
pub mod pull;
pub mod puller;
pub mod reference;
pub mod registry;
pub mod settings;
pub mod store;
pub mod unpack;

#[cfg(test)]
mod fixture_tests;

pub use blobs::{BlobError, BlobStore};
pub use digest::{Digest, DigestError};
pub use import::{ImportError, ImportedImage};
pub use oci::Platform;
pub use pull::{Ensured, PullError, PullOptions, PullPolicy, PullProgress, PulledImage};
pub use puller::{Puller, Pulling};
pub use reference::{ImageRef, RefError};
pub use registry::{ClientOptions, Registries, RegistryClient, RegistryConfig, RegistryError};
pub use settings::{ImagesConfig, ImagesSettings};
pub use store::{ImageEntry, ImageStore, StoreError};
pub use unpack::UnpackError;

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
