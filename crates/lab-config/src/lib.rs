//! Reads a lab project's configuration (`lab.toml`) into typed models that
//! remember where each value came from, so later errors (an unknown layer, a
//! bad rule) can point at the exact line. Owns the project format; knows
//! nothing about building or syncing. The only I/O is reading `lab.toml`
//! and, for make-style projects ([`compat`]), their inventory, layer lists
//! and fact files.

pub mod compat;
pub mod container;
pub mod edit;
mod error;
mod local_root;
mod project;

pub use error::ConfigError;
pub use lab_core::{Diagnose, Located};
pub use project::{
    owner_of, valid_name, Become, LayerRef, Machine, OwnerRule, Project, Settings, Transport,
    UnitAction, UnitRule, CONFIG_FILE, DEFAULT_POD_USER, RESERVED_VARIABLES,
};
