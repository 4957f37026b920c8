//! Names of the things a config declares.
//!
//! Newtypes rather than `String` so that a route name cannot be passed where
//! an upstream name is expected. They are cheap to clone (`Arc<str>`) because
//! they travel into metrics labels and admin views.

use std::fmt;
use std::sync::Arc;

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wraps a name that the config layer has already validated.
            pub fn new(name: &str) -> Self {
                Self(Arc::from(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

name_type!(
    /// The name of a listener (`[listener.<name>]`).
    ListenerName
);
name_type!(
    /// The name of a route (`[[route]] name = ...`).
    RouteName
);
name_type!(
    /// The name of an upstream (`[upstream.<name>]`).
    UpstreamName
);
name_type!(
    /// The name of a region inside an upstream (`[upstream.<u>.region.<name>]`).
    RegionName
);

/// Checks the shape every name must have: it appears in metric labels, admin
/// URLs and log lines, so it is kept to a small, unambiguous alphabet.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > 64 {
        return Err("must be at most 64 characters");
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("may contain only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_name("primary").is_ok());
        assert!(check_name("eu-west-1.a_b").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn names_display_plainly() {
        let n = UpstreamName::new("app");
        assert_eq!(n.to_string(), "app");
        assert_eq!(format!("{n:?}"), "UpstreamName(\"app\")");
    }
}
