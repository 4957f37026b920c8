//! levee's configuration: one TOML file, read in two steps.
//!
//! First the file is deserialized into the raw shape ([`raw`]), where every
//! table rejects keys it does not know — a typo in failover settings must be
//! an error, not a silent default. Then the raw shape is turned into the
//! validated [`Config`] ([`validate`]), whose types cannot hold a bad value.
//! Both steps collect every problem they find with its path
//! (`upstream.app.region.primary.endpoints[1]: ...`) instead of stopping at
//! the first, so `levee check` shows a user everything to fix at once.

mod duration;
mod error;
mod model;
mod raw;
mod validate;

#[cfg(test)]
mod tests;

pub use duration::parse_duration;
pub use error::{ConfigError, ConfigErrors};
pub use model::*;

use std::path::Path;

/// Parses and validates a config from TOML text.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let (raw, shape_errors) = raw::parse(text)?;
    validate::validate(raw, shape_errors)
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            path.display().to_string(),
            format!("cannot read the file: {e}"),
        )])
    })?;
    parse(&text)
}
